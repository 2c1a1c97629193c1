package runner_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
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

// staged is a Stager: Stage records the order, the durable functions wait
// for the test to release a write, and the first wait of "a" fails
// retryably, as a failed map write does.
type staged struct {
	mu      sync.Mutex
	order   []string // uuid:csn in the order staged
	waits   map[string]int
	release chan struct{}
}

func (s *staged) Name() string { return "staged" }

func (s *staged) Handle(ctx context.Context, ev event.Event) error {
	return errors.New("Handle called on a Stager")
}

func (s *staged) Stage(ctx context.Context, ev event.Event) (func(context.Context) error, error) {
	s.mu.Lock()
	s.order = append(s.order, ev.UUID+":"+ev.CSN)
	s.mu.Unlock()
	key := ev.UUID + ":" + ev.CSN
	return func(ctx context.Context) error {
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.waits[key]++
		if key == "a:1" && s.waits[key] == 1 {
			return fault.Retryable(errors.New("write failed"))
		}
		return nil
	}, nil
}

// A Stager's events of one entry are all staged, in order, before the
// first is durable; each is acked only once its wait succeeds, a failed
// wait is retried by waiting again (never by staging again), and the
// consumer may hold far more unacked events than a Handler's.
func TestStagerStagesAheadAndAcksWhenDurable(t *testing.T) {
	t.Parallel()
	bus := testenv.StartNATS(t).Bus(t)
	s := &staged{waits: map[string]int{}, release: make(chan struct{})}
	startRunner(t, bus, s)
	for i := 1; i <= 3; i++ {
		publish(t, bus, "a", fmt.Sprint(i))
	}
	publish(t, bus, "b", "1")
	testenv.Eventually(t, 5*time.Second, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.order) < 4 {
			return fmt.Errorf("staged %v", s.order)
		}
		return nil
	})
	s.mu.Lock()
	var a []string
	for _, k := range s.order {
		if k[0] == 'a' {
			a = append(a, k)
		}
	}
	s.mu.Unlock()
	if fmt.Sprint(a) != "[a:1 a:2 a:3]" {
		t.Fatalf("entry a staged as %v", a)
	}
	ctx := context.Background()
	cons, err := bus.Stream.Consumer(ctx, runner.ConsumerName("staged", "mail.example.org"))
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ci.NumAckPending != 4 || ci.Config.MaxAckPending != runner.StagedAckPending {
		t.Fatalf("before any write: %d unacked (want 4), max %d", ci.NumAckPending, ci.Config.MaxAckPending)
	}
	close(s.release)
	testenv.Eventually(t, 5*time.Second, func() error {
		ci, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if ci.NumAckPending != 0 || ci.AckFloor.Stream != 4 {
			return fmt.Errorf("%d unacked, acked to %d", ci.NumAckPending, ci.AckFloor.Stream)
		}
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) != 4 || s.waits["a:1"] != 2 {
		t.Errorf("staged %v; a:1 waited %d times (want 2: failed once, then durable)", s.order, s.waits["a:1"])
	}
}

// blocking is a handler that holds the entries named in slow for a while,
// as a mailbox handler waits on a slow Dovecot.
type blocking struct {
	slow    map[string]time.Duration
	mu      sync.Mutex
	applied int
}

func (b *blocking) Name() string { return "blocking" }

func (b *blocking) Handle(ctx context.Context, ev event.Event) error {
	if d, ok := b.slow[ev.UUID]; ok {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	b.mu.Lock()
	b.applied++
	b.mu.Unlock()
	return nil
}

// While every lane is busy with a slow entry, events keep arriving in
// small bursts: the runner holds them back in the consumer rather than in
// a goroutine each (a start at 100k had tens of thousands parked on the
// lane semaphore, a good part of its memory), and once the slow entries
// are done every event is applied at once.
func TestNoStallWhileLanesAreBusy(t *testing.T) {
	t.Parallel()
	bus := testenv.StartNATS(t).Bus(t)
	h := &blocking{slow: map[string]time.Duration{}}
	for i := 0; i < 8; i++ {
		h.slow[fmt.Sprintf("slow%d", i)] = 3 * time.Second
	}
	startRunner(t, bus, h)
	for i := 0; i < 8; i++ {
		publish(t, bus, fmt.Sprintf("slow%d", i), "1")
	}
	time.Sleep(200 * time.Millisecond) // the slow entries hold every lane
	before := runtime.NumGoroutine()
	const n = 3000
	for i := 0; i < n; i++ {
		ev := event.Event{V: 1, Op: event.OpModify, Kind: event.KindUser, UUID: fmt.Sprintf("e%05d", i), CSN: "1"}
		data, _ := json.Marshal(ev)
		if _, err := bus.JS.PublishAsync(ev.Subject(), data); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			<-bus.JS.PublishAsyncComplete()
			time.Sleep(20 * time.Millisecond)
		}
	}
	<-bus.JS.PublishAsyncComplete()
	if g := runtime.NumGoroutine(); g > before+100 {
		t.Errorf("%d goroutines while the lanes are busy (%d before the events)", g, before)
	}
	start := time.Now()
	testenv.Eventually(t, 20*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.applied < n+8 {
			return fmt.Errorf("%d of %d applied", h.applied, n+8)
		}
		return nil
	})
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("all events applied only %s after the last publish", took)
	}
}
