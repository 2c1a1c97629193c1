package runner_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/fault"
	"mailsync/internal/testenv"
	"mailsync/runner"
	"mailsync/stream"
)

// scripted is a handler whose result per entry is scripted by the test; it
// records what it applied, in order.
type scripted struct {
	mu      sync.Mutex
	fails   map[string][]error // per uuid, errors to return before success
	applied []string           // uuid:csn in the order applied
	calls   map[string]int
	at      map[string][]time.Time
}

func (s *scripted) Name() string { return "scripted" }

func (s *scripted) Handle(ctx context.Context, ev event.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[ev.UUID]++
	s.at[ev.UUID] = append(s.at[ev.UUID], time.Now())
	if f := s.fails[ev.UUID]; len(f) > 0 {
		s.fails[ev.UUID] = f[1:]
		return f[0]
	}
	s.applied = append(s.applied, ev.UUID+":"+ev.CSN)
	return nil
}

func (s *scripted) appliedList() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.applied...)
}

func publish(t *testing.T, bus *stream.Bus, uuid, csn string) {
	t.Helper()
	ev := event.Event{V: 1, Op: event.OpModify, Kind: event.KindUser, UUID: uuid, DN: "uid=" + uuid + ",ou=people,dc=example,dc=org", CSN: csn}
	data, _ := json.Marshal(ev)
	m := &nats.Msg{Subject: ev.Subject(), Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, ev.MsgID())
	if _, err := bus.JS.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func startRunner(t *testing.T, bus *stream.Bus, h runner.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := runner.New(bus, runner.Config{Host: "mail.example.org", InitialBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, MaxAttempts: 3},
		zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), h)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runner: %v", err)
		}
	})
}

func TestRetryableFailureAppliedOnceAfterBackoff(t *testing.T) {
	bus := testenv.StartNATS(t).Bus(t)
	down := fault.Retryable(errors.New("dovecot: connection refused"))
	h := &scripted{fails: map[string][]error{"a": {down, down, down}}, calls: map[string]int{}, at: map[string][]time.Time{}}
	startRunner(t, bus, h)
	publish(t, bus, "a", "1")
	publish(t, bus, "a", "2") // must wait behind the failing one
	publish(t, bus, "b", "1") // must not
	testenv.Eventually(t, 10*time.Second, func() error {
		if got := h.appliedList(); len(got) != 3 {
			return fmt.Errorf("applied %v", got)
		}
		return nil
	})
	got := h.appliedList()
	if got[0] != "b:1" || got[1] != "a:1" || got[2] != "a:2" {
		t.Fatalf("applied in order %v; want b:1 first (not blocked), then a:1, a:2 in stream order", got)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.calls["a"] != 5 {
		t.Errorf("handler called %d times for a, want 4 for a:1 (3 failures + success) and 1 for a:2", h.calls["a"])
	}
	at := h.at["a"]
	if gap := at[3].Sub(at[0]); gap < 100*time.Millisecond {
		t.Errorf("three retries took %s; no backoff was applied", gap)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(h.applied); n != 3 {
		t.Errorf("applied %d times after settling, want 3 (each event once)", n)
	}
}

func TestPermanentFailureIsDeadLettered(t *testing.T) {
	bus := testenv.StartNATS(t).Bus(t)
	h := &scripted{fails: map[string][]error{
		"bad":     {fault.Permanentf("invalid address %q", "a@b@c")},
		"unknown": {errors.New("x"), errors.New("y"), errors.New("z")},
	}, calls: map[string]int{}, at: map[string][]time.Time{}}
	startRunner(t, bus, h)
	publish(t, bus, "bad", "1")
	publish(t, bus, "unknown", "1")
	publish(t, bus, "good", "1")
	testenv.Eventually(t, 10*time.Second, func() error {
		info, err := bus.Dead.Info(context.Background())
		if err != nil {
			return err
		}
		if info.State.Msgs != 2 {
			return fmt.Errorf("%d dead letters", info.State.Msgs)
		}
		return nil
	})
	m, err := bus.Dead.GetLastMsgForSubject(context.Background(), runner.DeadSubject("scripted", "mail.example.org", "bad"))
	if err != nil {
		t.Fatal(err)
	}
	var dl runner.DeadLetter
	if err := json.Unmarshal(m.Data, &dl); err != nil {
		t.Fatal(err)
	}
	if dl.DN != "uid=bad,ou=people,dc=example,dc=org" || dl.UUID != "bad" || dl.Reason != `invalid address "a@b@c"` || dl.Attempts != 1 {
		t.Errorf("dead letter %+v", dl)
	}
	if got := h.appliedList(); len(got) != 1 || got[0] != "good:1" {
		t.Errorf("applied %v, want good:1 only", got)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.calls["unknown"] != 3 {
		t.Errorf("unclassified error tried %d times, want MaxAttempts=3", h.calls["unknown"])
	}
}

func TestOrderPerEntryUnderParallelism(t *testing.T) {
	bus := testenv.StartNATS(t).Bus(t)
	h := &scripted{fails: map[string][]error{}, calls: map[string]int{}, at: map[string][]time.Time{}}
	startRunner(t, bus, h)
	for i := range 50 {
		for _, u := range []string{"p", "q", "r", "s"} {
			publish(t, bus, u, fmt.Sprintf("%03d", i))
		}
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		if n := len(h.appliedList()); n != 200 {
			return fmt.Errorf("applied %d of 200", n)
		}
		return nil
	})
	last := map[string]string{}
	for _, a := range h.appliedList() {
		u, csn := a[:1], a[2:]
		if csn <= last[u] {
			t.Fatalf("entry %s: %s applied after %s", u, csn, last[u])
		}
		last[u] = csn
	}
}
