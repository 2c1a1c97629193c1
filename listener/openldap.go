package listener

import (
	"context"
	"errors"

	"github.com/go-ldap/ldap/v3"

	"mailsync/config"
)

// OpenLDAP is slapd's syncprov overlay: the sync state control carries the
// entryUUID, and every entry has an entryCSN, which is the change's id and
// begins with its time to the microsecond. A Config without a Flavor
// follows OpenLDAP.
type OpenLDAP struct{}

func (OpenLDAP) Name() string { return config.FlavorOpenLDAP }

func (OpenLDAP) Attributes() []string { return []string{"entryUUID", "entryCSN"} }

func (OpenLDAP) syncAttributes() []string { return []string{"entryCSN"} }

func (OpenLDAP) Identity(e Entry) (string, error) {
	if id := e.Attr("entryUUID"); id != "" {
		return id, nil
	}
	return "", errors.New("no entryUUID")
}

func (OpenLDAP) ChangeID(s Sent) string { return s.Entry.Attr("entryCSN") }

// beforeSync has nothing to do: syncprov reports every change itself.
func (OpenLDAP) beforeSync(context.Context, func(context.Context) (*ldap.Conn, error), Config, *refresh) error {
	return nil
}
