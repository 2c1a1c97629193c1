package listener

import (
	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
)

// EntryFrom is what the listener stores for an LDAP search result entry
// with identity uuid: the followed attributes and the entry's kind. ok is
// false for an entry mailsync does not follow. Readers of the directory
// outside the sync (`mailsync check`, `resync`, tests) use it to see
// entries exactly as the listener does.
func EntryFrom(e *ldap.Entry, uuid string) (event.Entry, bool) {
	raw := make(map[string][]string, len(e.Attributes))
	for _, a := range e.Attributes {
		raw[a.Name] = a.Values
	}
	attrs := event.NewAttrs(raw)
	kind, ok := event.KindOf(attrs)
	if !ok {
		return event.Entry{}, false
	}
	return event.Entry{UUID: uuid, DN: e.DN, Kind: kind, Attrs: attrs, CSN: e.GetAttributeValue("entryCSN")}, true
}
