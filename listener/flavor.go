package listener

import (
	"context"
	"fmt"
	"strings"

	"github.com/go-ldap/ldap/v3"

	"mailsync/config"
	"mailsync/event"
)

// Flavor is a directory server's dialect of RFC 4533 content
// synchronisation. The listener speaks the same protocol to every
// directory; a flavor says which attributes name an entry and date its
// changes, and makes up for what its server forgets to report. There are
// two: OpenLDAP (openldap.go) and DS389 (ds389.go).
type Flavor interface {
	// Name is the flavor as the config names it (ldap.flavor).
	Name() string
	// Attributes are the operational attributes a plain search asks for
	// besides the followed ones: those Identity and ChangeID read.
	Attributes() []string
	// Identity is the id the directory's sync state control gives an
	// entry, read from the entry's attributes, for readers of the
	// directory outside the sync (EntryFrom). It is stable across renames
	// and moves.
	Identity(e Entry) (string, error)
	// ChangeID is the id of the change that produced s (event.Event.CSN):
	// it begins with the change's time (event.ChangeTime), differs between
	// two changes of an entry and stays the same when the same change is
	// replayed; it goes into the Nats-Msg-Id.
	ChangeID(s Sent) string
	// syncAttributes are those the sync search asks for: ChangeID's
	// alone, since the sync state control carries the identity (every
	// byte counts in a full refresh).
	syncAttributes() []string
	// beforeSync runs before each sync search, on a connection of its own
	// from dial.
	beforeSync(ctx context.Context, dial func(context.Context) (*ldap.Conn, error), cfg Config, rf *refresh) error
}

// Entry is what a flavor reads of a directory entry: its attributes'
// first values, from a sync search's message or a plain search's result.
type Entry interface {
	Attr(name string) string
}

// Sent is one entry as the directory sent it, for a flavor to name the
// change that produced it.
type Sent struct {
	Entry Entry
	DN    string
	// Attrs are the entry's followed attributes.
	Attrs event.Attrs
	// Cookie is the entry's own sync cookie, Start the one the session
	// started from; both nil outside a sync search.
	Cookie, Start []byte
}

// ParseFlavor is the flavor of a name (ldap.flavor): one of
// config.Flavors, or empty for OpenLDAP.
func ParseFlavor(s string) (Flavor, error) {
	switch s {
	case "", config.FlavorOpenLDAP:
		return OpenLDAP{}, nil
	case config.Flavor389DS:
		return DS389{}, nil
	}
	return nil, fmt.Errorf("unknown directory flavor %q (want %s)", s, strings.Join(config.Flavors(), " or "))
}
