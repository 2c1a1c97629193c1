package listener_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/stream"
)

// A batch is bounded by its bytes as by its count: forty users with 2 kB
// of attributes each, in batches of at most 8 kB, take ten batches or more
// where the count alone (500) would make one.
func TestBatchBytes(t *testing.T) {
	const users = 40
	r := newRig(t)
	r.cfg.BatchSize, r.cfg.BatchBytes = 500, 8<<10
	pad := strings.Repeat("x", 2000)
	for i := range users {
		r.ldap.AddUser(t, fmt.Sprintf("big%02d", i), fmt.Sprintf("big%02d@example.org", i),
			map[string][]string{event.AttrAlternativeAddress: {pad + fmt.Sprintf("%02d@example.org", i)}})
	}
	var batches atomic.Int32
	r.start(listener.Hooks{AfterPublish: func() error { batches.Add(1); return nil }})
	r.waitCount(0, users)
	if n := batches.Load(); n < 10 {
		t.Fatalf("%d users of 2 kB published in %d batches of at most 8 kB", users, n)
	}
}

// A refresh in many small batches keeps several in the pipeline at once.
// Whatever point it stops at, no entry state is stored before its event,
// the stored sequence never passes the stream, and there is no cookie until
// everything is stored; after a restart each entry has exactly one event.
func TestRefreshInSmallBatches(t *testing.T) {
	const users = 40
	r := newRig(t)
	r.cfg.BatchSize = 3
	for i := range users {
		r.ldap.AddUser(t, fmt.Sprintf("batch%02d", i), fmt.Sprintf("batch%02d@example.org", i), nil)
	}

	// Crash after the fifth batch is acked.
	var batches atomic.Int32
	r.start(listener.Hooks{AfterPublish: func() error {
		if batches.Add(1) == 5 {
			return errors.New("injected crash")
		}
		return nil
	}})
	select {
	case err := <-r.done:
		if !errors.Is(err, listener.ErrCrash) {
			t.Fatalf("listener ended with %v, want the injected crash", err)
		}
		r.cancel = nil
	case <-time.After(20 * time.Second):
		t.Fatal("listener did not crash")
	}
	ctx := context.Background()
	inStream := map[string]bool{}
	for _, ev := range r.waitCount(0, 15) {
		inStream[ev.UUID] = true
	}
	states, err := stream.LoadEntries(ctx, r.bus.Entries)
	if err != nil {
		t.Fatal(err)
	}
	for u, e := range states {
		if !inStream[u] {
			t.Errorf("state of %s stored without its event", e.DN)
		}
	}
	info, err := r.bus.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if seq := entriesSeq(t, r.bus); seq > info.State.LastSeq {
		t.Errorf("entries sequence %d ahead of the stream (last %d)", seq, info.State.LastSeq)
	}
	if _, err := r.bus.State.Get(ctx, listener.KeyCookie); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("cookie stored before the refresh was: %v", err)
	}

	r.start(listener.Hooks{})
	testenv.Eventually(t, 20*time.Second, func() error {
		if _, err := r.bus.State.Get(ctx, listener.KeyCookie); err != nil {
			return fmt.Errorf("no cookie yet: %w", err)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	count := map[string]int{}
	for _, ev := range r.all() {
		if ev.Op != event.OpAdd {
			t.Errorf("%s %s, want only adds", ev.Op, ev.DN)
		}
		count[ev.UUID]++
	}
	states, err = stream.LoadEntries(ctx, r.bus.Entries)
	if err != nil {
		t.Fatal(err)
	}
	if len(count) != users || len(states) != users {
		t.Fatalf("%d entries with events, %d states; want %d each", len(count), len(states), users)
	}
	for u, n := range count {
		if n != 1 {
			t.Errorf("%s: %d events, want 1", states[u].DN, n)
		}
	}
	info, err = r.bus.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if seq := entriesSeq(t, r.bus); seq != info.State.LastSeq {
		t.Errorf("entries sequence %d, want the stream's last %d", seq, info.State.LastSeq)
	}
}

func entriesSeq(t *testing.T, bus *stream.Bus) uint64 {
	t.Helper()
	e, err := bus.State.Get(context.Background(), listener.KeyEntriesSeq)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
