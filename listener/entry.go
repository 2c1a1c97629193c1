package listener

import (
	"fmt"

	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
)

// searchEntry is a plain search's result as an Entry.
type searchEntry struct{ e *ldap.Entry }

func (s searchEntry) Attr(name string) string { return s.e.GetAttributeValue(name) }

// EntryFrom is what the listener stores for an LDAP search result entry
// read with f.Attributes() and the followed attributes: the entry's
// identity, kind, followed attributes and change id, as f gives them. ok
// is false for an entry mailsync does not follow; err says a followed
// entry has no identity (its UUID is then ""). Readers of the directory
// outside the sync (`mailsync check`, `resync`, tests) use it to see
// entries exactly as the listener does. The attributes' value lists are
// shared with e.
func EntryFrom(f Flavor, e *ldap.Entry) (entry event.Entry, ok bool, err error) {
	attrs := followedAttrs(e)
	kind, ok := event.KindOf(attrs)
	if !ok {
		return event.Entry{}, false, nil
	}
	se := searchEntry{e}
	entry = event.Entry{DN: e.DN, Kind: kind, Attrs: attrs,
		CSN: f.ChangeID(Sent{Entry: se, DN: e.DN, Attrs: attrs})}
	entry.UUID, err = f.Identity(se)
	if err != nil {
		err = fmt.Errorf("entry %s: %w", e.DN, err)
	}
	return entry, true, err
}

// followedAttrs is event.NewAttrs for an LDAP entry without the map of raw
// attributes in between (it runs for every entry of a refresh); the value
// lists are shared with e.
func followedAttrs(e *ldap.Entry) event.Attrs {
	a := make(event.Attrs, len(e.Attributes))
	for _, at := range e.Attributes {
		addFollowed(a, at.Name, at.Values)
	}
	return a
}

// addFollowed adds the values of attribute name to a if mailsync follows it.
func addFollowed(a event.Attrs, name string, values []string) {
	if len(values) == 0 {
		return
	}
	name, ok := followedName(name)
	if !ok {
		return
	}
	if prev, dup := a[name]; dup {
		a[name] = append(prev[:len(prev):len(prev)], values...)
	} else {
		a[name] = values
	}
}

// followedName is event.CanonicalAttr, first trying the schema spelling
// servers send, which needs no lowercasing.
func followedName(name string) (string, bool) {
	for _, f := range event.Followed {
		if name == f {
			return f, true
		}
	}
	return event.CanonicalAttr(name)
}
