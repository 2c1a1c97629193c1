package listener

import (
	"testing"

	"mailsync/event"
)

// TestChange is the listener's change rule as a table: what was published
// and what the directory holds now give one event or none.
func TestChange(t *testing.T) {
	user := func(addr string) event.Attrs {
		return event.Attrs{event.AttrObjectClass: {"univentionMail"}, event.AttrUID: {"a"}, event.AttrPrimaryAddress: {addr}}
	}
	other := event.Attrs{event.AttrObjectClass: {"organizationalUnit"}}
	dn, dn2 := "uid=a,ou=people,dc=x", "uid=a,ou=staff,dc=x"
	prev := &event.Entry{UUID: "u1", DN: dn, Kind: event.KindUser, Attrs: user("a@x.org"), CSN: "c1"}
	for _, tc := range []struct {
		name    string
		prev    *event.Entry
		dn      string
		attrs   event.Attrs
		outcome Outcome
		op      event.Op
		oldDN   string
	}{
		{"new entry", nil, dn, user("a@x.org"), Publish, event.OpAdd, ""},
		{"new entry outside the filter", nil, dn, other, NotFollowed, "", ""},
		{"gone, never published", nil, dn, nil, NotFollowed, "", ""},
		{"same state", prev, dn, user("a@x.org"), Unchanged, "", ""},
		{"address changed", prev, dn, user("b@x.org"), Publish, event.OpModify, ""},
		{"moved (modrdn)", prev, dn2, user("a@x.org"), Publish, event.OpModify, dn},
		{"left the filter", prev, dn, other, Publish, event.OpDelete, ""},
		{"deleted", prev, "", nil, Publish, event.OpDelete, ""},
	} {
		ev, got := Change("u1", tc.prev, tc.dn, tc.attrs)
		if got != tc.outcome || (got == Publish && (ev.Op != tc.op || ev.OldDN != tc.oldDN || ev.UUID != "u1")) {
			t.Errorf("%s: %v %+v, want %v op %q old dn %q", tc.name, got, ev, tc.outcome, tc.op, tc.oldDN)
			continue
		}
		switch {
		case got != Publish:
		case ev.Op == event.OpDelete:
			if ev.DN != dn || ev.Kind != event.KindUser || !ev.Old.Equal(prev.Attrs) || ev.New != nil || ev.CSN != "c1" {
				t.Errorf("%s: delete %+v, want the published state with its change id", tc.name, ev)
			}
		case ev.Op == event.OpModify:
			if !ev.Old.Equal(prev.Attrs) || !ev.New.Equal(tc.attrs) || ev.DN != tc.dn || ev.Kind != event.KindUser {
				t.Errorf("%s: modify %+v", tc.name, ev)
			}
		case ev.Op == event.OpAdd:
			if ev.Old != nil || !ev.New.Equal(tc.attrs) || ev.Kind != event.KindUser {
				t.Errorf("%s: add %+v", tc.name, ev)
			}
		}
	}
}
