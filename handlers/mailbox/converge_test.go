package mailbox_test

import (
	"context"
	"encoding/json"
	"testing"

	"mailsync/event"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
)

// userEvents reads every event of the entry at dn from the stream, oldest
// first.
func (e *env) userEvents(t testing.TB, uuid string) []event.Event {
	t.Helper()
	ctx := context.Background()
	info, err := e.p.Bus.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []event.Event
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := e.p.Bus.Stream.GetMsg(ctx, seq)
		if err != nil || m.Subject != event.SubjectPrefix+".user."+uuid {
			continue
		}
		var ev event.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// TestRedeliveredEventChangesNothing: a user renamed A -> B -> C through
// the whole pipeline; then each of its earlier events (the add, A -> B) is
// handed to the handler again, as a redelivery after a crash would. The
// handler converges to the entry's newest state (C), so nothing on disk
// changes and the mail stays readable at C. Under every rename/delete cell.
func TestRedeliveredEventChangesNothing(t *testing.T) {
	t.Parallel()
	for _, pol := range cells {
		t.Run(pol.String(), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, pol, testenv.DovecotOptions{}, true)
			dn := e.ldap.AddUser(t, "rita", "rita@example.org", nil)
			e.created(t, "rita@example.org")
			e.fill(t, "rita@example.org")
			seq := e.lastSeq(t)
			e.ldap.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {"rita.b@example.org"}})
			e.settledAfter(t, seq, 1)
			seq = e.lastSeq(t)
			e.ldap.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {"rita.c@example.org"}})
			e.settledAfter(t, seq, 1)
			want := empty
			if pol.rename {
				want = filled
			}
			e.wantFolders(t, "rita.c@example.org", want)

			var uuid string
			for _, en := range e.ldap.Entries(t) {
				if en.DN == dn {
					uuid = en.UUID
				}
			}
			evs := e.userEvents(t, uuid)
			if len(evs) != 3 {
				t.Fatalf("%d events of %s in the stream, want 3 (add, two renames)", len(evs), dn)
			}
			before := snapshot(t, e.dc.Spool)
			for _, ev := range evs[:2] {
				if err := e.h.Handle(context.Background(), ev); err != nil {
					t.Errorf("redelivered %s event (%v -> %v): %v", ev.Op, ev.Old[event.AttrPrimaryAddress], ev.New[event.AttrPrimaryAddress], err)
				}
			}
			if d := before.diff(snapshot(t, e.dc.Spool)); d != "" {
				t.Errorf("redelivered events changed the spool:\n%s", d)
			}
			e.wantFolders(t, "rita.c@example.org", want)
			for _, gone := range []string{"rita.b@example.org"} {
				if pol.rename && dirExists(e.dc.Home(gone)) {
					t.Errorf("home of %s exists after redelivery", gone)
				}
			}
			if n := len(deadLetters(t, e.p)); n != 0 {
				t.Errorf("%d dead letters", n)
			}
			// The record of the last applied state says C.
			st, ok, err := mailbox.AppliedRecord(e.cfg.StateDir, uuid)
			if err != nil || !ok || st.Address != "rita.c@example.org" {
				t.Errorf("applied record %+v, %v (%v), want address rita.c@example.org", st, ok, err)
			}
		})
	}
}
