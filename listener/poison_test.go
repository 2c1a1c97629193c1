package listener_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/handlers/aliases"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/stream"
)

// deadOf returns the listener's dead letters for an entry.
func deadOf(t *testing.T, bus *stream.Bus, uuid string) []testenv.DeadLetter {
	t.Helper()
	var out []testenv.DeadLetter
	for _, dl := range testenv.DeadLetters(t, bus) {
		if dl.Subject == listener.DeadSubject(uuid) {
			out = append(out, dl)
		}
	}
	return out
}

func uuidOf(t *testing.T, l *testenv.Slapd, dn string) string {
	t.Helper()
	for _, e := range l.Entries(t) {
		if e.DN == dn {
			return e.UUID
		}
	}
	t.Fatalf("no entry %s", dn)
	return ""
}

// bigValue is an alternative address of n bytes.
func bigValue(n int, tag string) string {
	return tag + strings.Repeat("x", n-len(tag)-len("@example.org")) + "@example.org"
}

// TestPoisonEntrySkipped: an entry whose event the stream cannot take (a
// value over the per-value cap; an event over the stream's maximum message
// size) is reported once — status, the state bucket, a dead letter naming
// DN and attribute, one log line — and skipped; the changes after it are
// published, the cookie advances past it (a restart neither re-reports it
// nor blocks), and it is published once fixed, its report withdrawn.
func TestPoisonEntrySkipped(t *testing.T) {
	r := newRig(t)
	var logs testenv.LogBuffer
	r.logs = &logs
	alice := r.ldap.AddUser(t, "alice", "alice@example.org", nil)
	bob := r.ldap.AddUser(t, "bob", "bob@example.org", nil)
	r.start(listener.Hooks{})
	r.waitCount(0, 2)
	bobUUID := uuidOf(t, r.ldap, bob)

	// A 2 MB value: over the per-value cap.
	r.ldap.Modify(t, bob, map[string][]string{event.AttrAlternativeAddress: {bigValue(2<<20, "big")}})
	r.ldap.Modify(t, alice, map[string][]string{event.AttrAlternativeAddress: {"a1@example.org"}})
	carol := r.ldap.AddUser(t, "carol", "carol@example.org", nil)
	evs := r.waitFor(2, "alice's change and carol", func(e []event.Event) bool {
		return len(e) >= 2 && e[len(e)-1].DN == carol
	})
	for _, ev := range evs {
		if ev.UUID == bobUUID {
			t.Fatalf("bob's unpublishable change was published: %s", ev.Op)
		}
	}
	st := r.l.Status().Poison
	if len(st) != 1 || st[0].DN != bob || st[0].Attr != event.AttrAlternativeAddress || !strings.Contains(st[0].Reason, "per-value cap") {
		t.Fatalf("status poison = %+v, want bob's mailAlternativeAddress over the cap", st)
	}
	dls := deadOf(t, r.bus, bobUUID)
	if len(dls) != 1 || dls[0].DN != bob || len(dls[0].Attrs) != 1 || dls[0].Attrs[0] != event.AttrAlternativeAddress ||
		!strings.Contains(dls[0].Reason, bob) || !strings.Contains(dls[0].Reason, event.AttrAlternativeAddress) {
		t.Fatalf("dead letters of bob = %+v", dls)
	}
	if n := strings.Count(logs.String(), "entry cannot be published"); n != 1 || !strings.Contains(logs.String(), `"attr":"mailAlternativeAddress"`) {
		t.Fatalf("%d log lines for the poison entry, want 1 naming the attribute:\n%s", n, logs.String())
	}

	// An event over the stream's maximum message size, every value under
	// the cap: 20 values of 60 kB.
	dave := r.ldap.AddUser(t, "dave", "dave@example.org", nil)
	r.waitFor(0, "dave", func(e []event.Event) bool { return len(e) > 0 && e[len(e)-1].DN == dave })
	daveUUID := uuidOf(t, r.ldap, dave)
	var many []string
	for i := 0; i < 20; i++ {
		many = append(many, bigValue(60_000, fmt.Sprintf("v%02d", i)))
	}
	r.ldap.Modify(t, dave, map[string][]string{event.AttrAlternativeAddress: many})
	r.ldap.Modify(t, carol, map[string][]string{event.AttrAlternativeAddress: {"c1@example.org"}})
	r.waitFor(0, "carol's change", func(e []event.Event) bool {
		last := e[len(e)-1]
		return last.DN == carol && last.New.First(event.AttrAlternativeAddress) == "c1@example.org"
	})
	testenv.Eventually(t, 10*time.Second, func() error {
		ps, err := listener.LoadPoison(context.Background(), r.bus)
		if err != nil {
			return err
		}
		if len(ps) != 2 || ps[1].DN != dave || ps[1].Attr != event.AttrAlternativeAddress || !strings.Contains(ps[1].Reason, "maximum message size") {
			return fmt.Errorf("poison records %+v, want bob's and dave's", ps)
		}
		return nil
	})

	// A restart resumes after the skipped changes: nothing is reported
	// again, and later changes flow.
	r.stop()
	r.start(listener.Hooks{})
	n := len(r.all())
	r.ldap.Modify(t, alice, map[string][]string{event.AttrAlternativeAddress: {"a2@example.org"}})
	r.waitFor(n, "alice's second change", func(e []event.Event) bool { return len(e) > 0 && e[len(e)-1].DN == alice })
	if got := r.l.Status().Poison; len(got) != 2 {
		t.Errorf("after a restart the status lists %d poison entries, want 2", len(got))
	}
	if c := strings.Count(logs.String(), "entry cannot be published"); c != 2 || len(deadOf(t, r.bus, bobUUID)) != 1 {
		t.Errorf("after a restart: %d poison log lines (want 2: bob, dave), %d dead letters of bob (want 1)", c, len(deadOf(t, r.bus, bobUUID)))
	}

	// Fixed: bob's change is published against what was last published;
	// dave set back to it is only withdrawn from the reports.
	n = len(r.all())
	r.ldap.Modify(t, bob, map[string][]string{event.AttrAlternativeAddress: {"b1@example.org"}})
	evs = r.waitFor(n, "bob's fixed change", func(e []event.Event) bool { return len(e) > 0 && e[len(e)-1].DN == bob })
	fixed := evs[len(evs)-1]
	if fixed.Op != event.OpModify || len(fixed.Old[event.AttrAlternativeAddress]) != 0 || fixed.New.First(event.AttrAlternativeAddress) != "b1@example.org" {
		t.Errorf("fixed event %s old %v new %v; want the change from the last published state", fixed.Op, fixed.Old, fixed.New)
	}
	r.ldap.Modify(t, dave, map[string][]string{event.AttrAlternativeAddress: {}})
	testenv.Eventually(t, 10*time.Second, func() error {
		ps, err := listener.LoadPoison(context.Background(), r.bus)
		if err != nil {
			return err
		}
		if len(ps) > 0 || len(r.l.Status().Poison) > 0 {
			return fmt.Errorf("poison records left: %+v", ps)
		}
		if d := len(deadOf(t, r.bus, bobUUID)) + len(deadOf(t, r.bus, daveUUID)); d > 0 {
			return fmt.Errorf("%d dead letters of fixed entries left", d)
		}
		return nil
	})
	for _, ev := range r.all()[n:] {
		if ev.UUID == daveUUID {
			t.Errorf("dave set back to its published state gave an event: %s %v", ev.Op, ev.New)
		}
	}
}

// TestBigValueDoesNotBlockTheStream: a 2 MB value on one user while 100
// other changes are made, through the pipeline into the aliases handler and
// postmap: the 100 are applied, the big one is reported naming the DN, and
// applied once fixed.
func TestBigValueDoesNotBlockTheStream(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	h, err := aliases.New(aliases.Config{Dir: dir, PostmapPath: pf.Postmap, PostfixConfigDir: pf.ConfigDir}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	big := ldap.AddUser(t, "big", "big@example.org", nil)
	p := testenv.StartPipeline(t, ldap, "mail.example.org", h)
	p.Settled(t)
	bigUUID := uuidOf(t, ldap, big)
	table := "hash:" + dir + "/" + aliases.AliasMap
	mailboxes := "hash:" + dir + "/" + aliases.MailboxMap

	var addrs []string
	for i := 0; i < 100; i++ {
		if i == 30 {
			ldap.Modify(t, big, map[string][]string{event.AttrAlternativeAddress: {bigValue(2<<20, "big")}})
		}
		a := fmt.Sprintf("u%03d@example.org", i)
		ldap.AddUser(t, fmt.Sprintf("u%03d", i), a, nil)
		addrs = append(addrs, a)
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if got := pf.Query(t, mailboxes, addrs...); len(got) != len(addrs) {
			return fmt.Errorf("virtual_mailbox resolves %d of the %d new users", len(got), len(addrs))
		}
		return nil
	})
	ps := p.Listener.Status().Poison
	if len(ps) != 1 || ps[0].DN != big || ps[0].Attr != event.AttrAlternativeAddress {
		t.Fatalf("status poison %+v, want %s's mailAlternativeAddress", ps, big)
	}
	if dls := deadOf(t, p.Bus, bigUUID); len(dls) != 1 || dls[0].DN != big || !strings.Contains(dls[0].Reason, event.AttrAlternativeAddress) {
		t.Fatalf("dead letters of %s: %+v", big, dls)
	}

	ldap.Modify(t, big, map[string][]string{event.AttrAlternativeAddress: {"big-alt@example.org"}})
	p.Settled(t)
	if got := pf.Query(t, table, "big-alt@example.org")["big-alt@example.org"]; got != "big@example.org" {
		t.Errorf("fixed: big-alt@example.org resolves to %q, want big@example.org", got)
	}
	if ps := p.Listener.Status().Poison; len(ps) != 0 {
		t.Errorf("fixed, still reported: %+v", ps)
	}
}
