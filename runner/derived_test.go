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

	"mailsync/event"
	"mailsync/fault"
	"mailsync/internal/testenv"
	"mailsync/runner"
	"mailsync/stream"
)

// derived is a Derived Stager (as the maps are): the first event of entry
// "a" it stages holds its lane until the test opens gate, so the entry's
// later events are delivered behind it.
type derived struct {
	mu      sync.Mutex
	staged  []string // uuid:csn in the order staged
	withOld int      // events staged with Old
	gate    chan struct{}
	first   sync.Once
}

func (d *derived) Name() string { return "derived" }

func (d *derived) Handle(ctx context.Context, ev event.Event) error {
	return errors.New("Handle called on a Stager")
}

func (d *derived) Load(ctx context.Context, entries []event.Entry) error { return nil }

func (d *derived) DerivedFromDirectory() {}

func (d *derived) Stage(ctx context.Context, ev event.Event) (func(context.Context) error, error) {
	if ev.UUID == "a" {
		d.first.Do(func() { <-d.gate })
	}
	d.mu.Lock()
	d.staged = append(d.staged, ev.UUID+":"+ev.CSN)
	if ev.Old != nil {
		d.withOld++
	}
	d.mu.Unlock()
	if ev.UUID == "bad" {
		return nil, fault.Permanentf("invalid address in %s", ev.DN)
	}
	return func(context.Context) error { return nil }, nil
}

// Of an entry's events delivered while its lane is busy, a Derived handler
// is given only the newest (it converges to the entry's newest state);
// the ones it overtakes are acked without being handled, an event of
// another entry is not touched, and every event ends acked.
func TestDerivedSkipsOvertakenEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus, h := newDerivedBus(t)
	startRunner(t, bus, h)
	const n = 30
	for i := 1; i <= n; i++ {
		publish(t, bus, "a", fmt.Sprint(i))
	}
	publish(t, bus, "b", "1")
	consumerInfo := func() (delivered, ackFloor uint64, pending int, err error) {
		c, err := bus.Stream.Consumer(ctx, runner.ConsumerName(h.Name(), "mail.example.org"))
		if err != nil {
			return 0, 0, 0, err
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return 0, 0, 0, err
		}
		return ci.Delivered.Stream, ci.AckFloor.Stream, ci.NumAckPending, nil
	}
	// Everything is delivered while a:1 holds its lane.
	testenv.Eventually(t, 10*time.Second, func() error {
		if d, _, _, err := consumerInfo(); err != nil || d < n+1 {
			return fmt.Errorf("delivered up to %d (%v)", d, err)
		}
		return nil
	})
	close(h.gate)
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, floor, pending, err := consumerInfo(); err != nil || floor < n+1 || pending != 0 {
			return fmt.Errorf("acked up to %d, %d unacked (%v)", floor, pending, err)
		}
		return nil
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	var a []string
	b := 0
	for _, k := range h.staged {
		if k == "b:1" {
			b++
		} else {
			a = append(a, k)
		}
	}
	if b != 1 {
		t.Errorf("b:1 staged %d times, want once", b)
	}
	// The first one taken up (before the rest came, most likely a:1)
	// waited at the gate; of the rest only the newest was staged.
	if len(a) == 0 || len(a) > 2 || a[len(a)-1] != fmt.Sprintf("a:%d", n) {
		t.Errorf("staged %v of a; want the one first taken up and a:%d, the newest, only", a, n)
	}
}

// A Derived handler is given its events without Old (it converges to New;
// Old is not decoded), and a dead letter of it still records the event
// whole.
func TestDerivedGetsNewOnlyDeadLetterWhole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus, h := newDerivedBus(t)
	close(h.gate)
	startRunner(t, bus, h)
	for _, uuid := range []string{"a", "bad"} {
		ev := event.Event{V: 1, Op: event.OpModify, Kind: event.KindGroup, UUID: uuid, DN: "cn=" + uuid + ",dc=example,dc=org", CSN: "1",
			Old: event.Attrs{event.AttrCN: {uuid}}, New: event.Attrs{event.AttrCN: {uuid}, event.AttrMailMember: {"x@example.org"}}}
		data, _ := json.Marshal(ev)
		m := &nats.Msg{Subject: ev.Subject(), Data: data, Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, ev.MsgID())
		if _, err := bus.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	var dead []testenv.DeadLetter
	testenv.Eventually(t, 10*time.Second, func() error {
		if dead = testenv.DeadLetters(t, bus); len(dead) != 1 {
			return fmt.Errorf("%d dead letters", len(dead))
		}
		return nil
	})
	if ev := dead[0].Event; ev.UUID != "bad" || ev.Old.First(event.AttrCN) != "bad" || ev.New.First(event.AttrMailMember) != "x@example.org" {
		t.Errorf("dead letter records %+v; want the event of bad whole, Old included", ev)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.staged) != 2 || h.withOld != 0 {
		t.Errorf("staged %v, %d of them with Old; want a:1 and bad:1, none with Old", h.staged, h.withOld)
	}
}

// newDerivedBus is a fresh bus whose listener has finished its refresh
// (the cookie is set) and a Derived handler held at its gate.
func newDerivedBus(t *testing.T) (*stream.Bus, *derived) {
	t.Helper()
	bus := testenv.StartNATS(t).Bus(t)
	if _, err := bus.State.Put(context.Background(), stream.KeyCookie, []byte("c")); err != nil {
		t.Fatal(err)
	}
	return bus, &derived{gate: make(chan struct{})}
}
