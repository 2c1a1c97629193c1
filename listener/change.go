package listener

import "mailsync/event"

// Outcome says why Change gives an event or none.
type Outcome int

const (
	// Publish: the event is published.
	Publish Outcome = iota
	// Unchanged: nothing mailsync follows changed (DN and followed
	// attributes as last published); no event.
	Unchanged
	// NotFollowed: the entry is outside mailsync's filter and was never
	// published; no event.
	NotFollowed
)

// Change is the listener's rule from an entry's state in the directory to
// the event it publishes, pure so that `mailsync plan` shows the same:
//   - prev is what was last published for the entry (its DN, kind, followed
//     attributes and change id), nil if nothing was;
//   - dn and attrs are the entry now, attrs holding the followed attributes
//     alone; nil attrs: the entry is gone from the directory.
//
// An entry mailsync follows that was not published is an add; one that
// was, a modify carrying the old attributes (old from what was published,
// never from LDAP) and, when the DN changed, the old DN: a modrdn is one
// modify. An entry that is gone or has left the filter (event.Filter) is a
// delete of what was published, with its change id. The caller sets the
// new change id and the time of an add or modify.
func Change(uuid string, prev *event.Entry, dn string, attrs event.Attrs) (event.Event, Outcome) {
	ev := event.Event{V: event.Version, UUID: uuid, DN: dn}
	kind, follows := event.Kind(""), false
	if attrs != nil {
		kind, follows = event.KindOf(attrs)
	}
	switch {
	case prev == nil && !follows:
		return ev, NotFollowed
	case prev == nil:
		ev.Op, ev.Kind, ev.New = event.OpAdd, kind, attrs
	case !follows:
		ev.Op, ev.Kind, ev.DN, ev.Old, ev.CSN = event.OpDelete, prev.Kind, prev.DN, prev.Attrs, prev.CSN
	case prev.DN == dn && prev.Kind == kind && prev.Attrs.Equal(attrs):
		return ev, Unchanged
	default:
		ev.Op, ev.Kind, ev.Old, ev.New = event.OpModify, kind, prev.Attrs, attrs
		if prev.DN != dn {
			ev.OldDN = prev.DN
		}
	}
	return ev, Publish
}
