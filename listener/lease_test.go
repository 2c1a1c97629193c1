package listener_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/stream"
)

// streamEvents reads every event in the stream, in order.
func streamEvents(t *testing.T, bus *stream.Bus) []event.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := bus.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var evs []event.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := bus.Stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("read event %d: %v", seq, err)
		}
		var ev event.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func waitActive(t *testing.T, h *testenv.Hosts, want string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	testenv.Eventually(t, within, func() error {
		if a := h.Active(); len(a) != 1 || a[0] != want {
			return fmt.Errorf("active listeners %v, want [%s]", a, want)
		}
		return nil
	})
	return time.Since(start)
}

// TestFailoverDuringBurst kills the active listener (no lease release, as
// SIGKILL would) during a burst of 1,000 directory changes: the standby
// takes over within seconds from the stored cookie and every change arrives
// once per (entryUUID, CSN), with the final states right.
func TestFailoverDuringBurst(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	h := testenv.StartHosts(t, ldap)
	h.StartListener("one", listener.Hooks{KeepLeaseOnExit: true})
	waitActive(t, h, "one", 10*time.Second)
	two := h.StartListener("two", listener.Hooks{})
	time.Sleep(1500 * time.Millisecond) // longer than a renewal: "two" must stay standby
	if a := h.Active(); len(a) != 1 || a[0] != "one" {
		t.Fatalf("active listeners %v, want [one]", a)
	}

	const n, killAt = 1000, 300
	var killed time.Time
	for i := 0; i < n; i++ {
		if i == killAt {
			h.StopListener("one")
			killed = time.Now()
		}
		ldap.AddUser(t, fmt.Sprintf("u%04d", i), fmt.Sprintf("u%04d@example.org", i), nil)
		// Paced so that the burst outlasts the takeover: the standby
		// starts from the cookie while the directory keeps changing.
		time.Sleep(4 * time.Millisecond)
	}
	burst := time.Since(killed)
	var takeover time.Duration
	if a := h.Active(); len(a) == 1 && a[0] == "two" {
		takeover = two.Status().ActiveSince.Sub(killed)
	} else {
		t.Errorf("burst ended before the standby took over (active %v); pace it slower", a)
		waitActive(t, h, "two", 15*time.Second)
		takeover = time.Since(killed)
	}
	t.Logf("killed after %d of %d changes; the rest took %s; standby active %s after the kill", killAt, n, burst, takeover)
	if takeover > listener.DefaultLeaseTTL+3*time.Second {
		t.Errorf("takeover took %s", takeover)
	}

	var evs []event.Event
	testenv.Eventually(t, 30*time.Second, func() error {
		evs = streamEvents(t, h.Bus)
		if len(evs) < n {
			return fmt.Errorf("%d events in the stream, want %d", len(evs), n)
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond) // let anything late land
	evs = streamEvents(t, h.Bus)
	distinct := map[string]int{}
	last := map[string]event.Event{}
	for _, ev := range evs {
		distinct[ev.UUID+" "+ev.CSN]++
		last[ev.UUID] = ev
	}
	dups := len(evs) - len(distinct)
	t.Logf("%d events in the stream, %d distinct (uuid, csn), %d doubled; listener two published %d",
		len(evs), len(distinct), dups, two.Status().Published)
	if len(distinct) != n {
		t.Errorf("%d distinct (uuid, csn) events, want %d", len(distinct), n)
	}
	if dups != 0 {
		t.Errorf("%d events doubled past Nats-Msg-Id dedupe", dups)
	}

	// Final states: the last event of every entry and the entries bucket
	// both say what the directory says.
	want := ldap.Entries(t)
	if len(want) != n {
		t.Fatalf("directory holds %d entries, want %d", len(want), n)
	}
	kv, err := stream.LoadEntries(context.Background(), h.Bus.Entries)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		ev, ok := last[w.UUID]
		if !ok || ev.Op == event.OpDelete || ev.DN != w.DN || !ev.New.Equal(w.Attrs) {
			t.Errorf("last event for %s: %+v; want the directory's state %v", w.DN, ev, w.Attrs)
		}
		if e, ok := kv[w.UUID]; !ok || e.DN != w.DN || !e.Attrs.Equal(w.Attrs) {
			t.Errorf("entries bucket for %s: %+v; want %v", w.DN, e, w.Attrs)
		}
	}
	if len(kv) != n {
		t.Errorf("entries bucket holds %d entries, want %d", len(kv), n)
	}
}

// TestLeaseHandover: a listener that stops cleanly releases the lease and
// the standby takes over at once; a listener whose lease is taken from it
// stops publishing at once.
func TestLeaseHandover(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	h := testenv.StartHosts(t, ldap)
	h.StartListener("one", listener.Hooks{})
	waitActive(t, h, "one", 10*time.Second)
	h.StartListener("two", listener.Hooks{})
	ldap.AddUser(t, "anna", "anna@example.org", nil)

	h.StopListener("one")
	if d := waitActive(t, h, "two", 5*time.Second); d > listener.DefaultLeaseRenew {
		t.Errorf("standby took %s to take a released lease", d)
	}
	ldap.AddUser(t, "ben", "ben@example.org", nil)

	// Someone else takes the lease (an operator, a listener with a clock
	// gone wrong): "two" must stop following the directory.
	ctx := context.Background()
	e, err := h.Bus.State.Get(ctx, listener.KeyLease)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Bus.State.Update(ctx, listener.KeyLease, []byte(`{"holder":"intruder"}`), e.Revision()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testenv.Eventually(t, 5*time.Second, func() error {
		if a := h.Active(); len(a) != 0 {
			return fmt.Errorf("active listeners %v after the lease was taken", a)
		}
		return nil
	})
	if d := time.Since(start); d > 2*listener.DefaultLeaseRenew {
		t.Errorf("holder noticed the lost lease after %s", d)
	}
	// While the intruder renews nothing, "two" takes the lease back after
	// the TTL and carries on from the cookie.
	ldap.AddUser(t, "carl", "carl@example.org", nil)
	waitActive(t, h, "two", 10*time.Second)
	testenv.Eventually(t, 10*time.Second, func() error {
		evs := streamEvents(t, h.Bus)
		if len(evs) != 3 {
			return fmt.Errorf("%d events, want anna, ben, carl", len(evs))
		}
		return nil
	})
}

// TestLeaseRestartSameHolder: a listener restarted with the same holder
// identity (same host and state dir, listener.HolderID) takes over the lease
// its killed predecessor left at once; a standby with another identity (another
// host) waits until the lease expires.
func TestLeaseRestartSameHolder(t *testing.T) {
	mx1, mx2 := t.TempDir(), t.TempDir()
	id1, err := listener.HolderID("mx1.example.org", mx1)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := listener.HolderID("mx1.example.org", mx1)
	id2, _ := listener.HolderID("mx2.example.org", mx2)
	if again != id1 || id2 == id1 {
		t.Fatalf("holder ids: %q then %q for one state dir, %q for another", id1, again, id2)
	}

	ldap := testenv.StartSlapd(t)
	h := testenv.StartHosts(t, ldap)
	h.StartListener(id1, listener.Hooks{KeepLeaseOnExit: true})
	waitActive(t, h, id1, 10*time.Second)
	h.StopListener(id1) // killed: the lease stays

	// Restarted on the same host: its own lease, at once.
	h.StartListener(id1, listener.Hooks{KeepLeaseOnExit: true})
	if d := waitActive(t, h, id1, 10*time.Second); d > listener.DefaultLeaseTTL/2 {
		t.Errorf("the restarted listener took %s to take its own lease back (TTL %s)", d, listener.DefaultLeaseTTL)
	}
	ldap.AddUser(t, "anna", "anna@example.org", nil)
	h.StopListener(id1)

	// Another host's standby waits for the lease to expire.
	h.StartListener(id2, listener.Hooks{})
	if d := waitActive(t, h, id2, 10*time.Second); d < listener.DefaultLeaseTTL-listener.DefaultLeaseRenew {
		t.Errorf("the standby of another host took the lease after %s, before it expired (TTL %s)", d, listener.DefaultLeaseTTL)
	}
	ldap.AddUser(t, "ben", "ben@example.org", nil)
	testenv.Eventually(t, 10*time.Second, func() error {
		if evs := streamEvents(t, h.Bus); len(evs) != 2 {
			return fmt.Errorf("%d events, want anna and ben", len(evs))
		}
		return nil
	})
}
