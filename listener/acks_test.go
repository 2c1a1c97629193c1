package listener

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mailsync/stream"
)

// ackBus is an embedded JetStream with mailsync's stream (testenv cannot be
// imported here: it imports this package).
func ackBus(t *testing.T) *stream.Bus {
	t.Helper()
	ns, err := stream.StartEmbedded(stream.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	bus, err := stream.Open(context.Background(), nc, stream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return bus
}

// ackerBus is ackBus with an acker on its connection.
func ackerBus(t *testing.T) (*stream.Bus, *acker) {
	t.Helper()
	bus := ackBus(t)
	a, err := newAcker(bus.NC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	return bus, a
}

func TestAckerRounds(t *testing.T) {
	ctx := context.Background()
	bus, a := ackerBus(t)

	// Two rounds in flight at once, as the pipeline has them.
	r1, r2 := a.begin("event", 300, false), a.begin("state", 300, false)
	for i := 0; i < 300; i++ {
		dn := "uid=u" + strconv.Itoa(i)
		if err := a.publish(r1, &nats.Msg{Subject: "mailsync.user.a" + strconv.Itoa(i), Data: []byte("x")}, dn); err != nil {
			t.Fatal(err)
		}
		if err := a.publish(r2, &nats.Msg{Subject: "mailsync.user.b" + strconv.Itoa(i), Data: []byte("y")}, dn); err != nil {
			t.Fatal(err)
		}
	}
	s1, err1 := a.wait(ctx, r1)
	s2, err2 := a.wait(ctx, r2)
	if err1 != nil || err2 != nil {
		t.Fatalf("rounds: %v, %v", err1, err2)
	}
	info, err := bus.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 600 || max(s1, s2) != 600 || min(s1, s2) < 300 {
		t.Fatalf("stream holds %d messages; rounds acked up to %d and %d", info.State.Msgs, s1, s2)
	}

	// A publish JetStream refuses fails its round, naming the entry.
	r := a.begin("event", 2, false)
	a.publish(r, &nats.Msg{Subject: "mailsync.user.c", Data: []byte("z")}, "uid=fine")
	bad := &nats.Msg{Subject: "mailsync.user.d", Data: []byte("z"), Header: nats.Header{}}
	bad.Header.Set(jetstream.ExpectedLastSeqHeader, "1")
	a.publish(r, bad, "uid=refused")
	_, err = a.wait(ctx, r)
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "event of uid=refused") {
		t.Fatalf("refused publish: %v", err)
	}

	// No stream for the subject: JetStream's no-responders status.
	r = a.begin("state", 1, false)
	a.publish(r, &nats.Msg{Subject: "nostream.here", Data: []byte("z")}, "uid=lost")
	if _, err = a.wait(ctx, r); !errors.Is(err, jetstream.ErrNoStreamResponse) || !strings.Contains(err.Error(), "uid=lost") {
		t.Fatalf("publish without a stream: %v", err)
	}

	// A real duplicate's ack reads as one.
	for i := 0; i < 2; i++ {
		m := &nats.Msg{Subject: "mailsync.user.dup", Data: []byte("z"), Header: nats.Header{jetstream.MsgIDHeader: {"dup-1"}}}
		reply, err := bus.NC.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup, err := parseAck(reply); err != nil || dup != (i == 1) {
			t.Fatalf("publish %d of one Msg-Id: ack %s: dup %v, %v", i+1, reply.Data, dup, err)
		}
	}

	// An ended context ends the wait.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	r = a.begin("event", 1, false)
	if _, err := a.wait(cctx, r); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("empty round with an ended context: %v", err)
	}
}

func TestParseAck(t *testing.T) {
	for _, c := range []struct {
		data string
		seq  uint64
		dup  bool
		err  bool
	}{
		{`{"stream":"MAILSYNC","seq":42}`, 42, false, false},
		{`{"stream":"MAILSYNC","domain":"hub","seq":7,"duplicate":true}`, 7, true, false},
		// as nats-server writes it
		{`{"stream":"MAILSYNC","seq":7,"duplicate": true}`, 7, true, false},
		{`{"stream":"MAILSYNC","seq":7,"duplicate": false}`, 7, false, false},
		{`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"MAILSYNC","seq":0}`, 0, false, true},
		{`{"stream":"MAILSYNC","seq":3,"error":{"code":500,"description":"odd order"}}`, 0, false, true},
		{`{"stream":""}`, 0, false, true},
		{`not json`, 0, false, true},
	} {
		seq, dup, err := parseAck(&nats.Msg{Data: []byte(c.data)})
		if seq != c.seq || dup != c.dup || (err != nil) != c.err {
			t.Errorf("%s: seq %d dup %v err %v", c.data, seq, dup, err)
		}
	}
}

// countAcks counts the messages arriving on the acker's inbox.
func countAcks(t *testing.T, a *acker) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	sub, err := a.nc.Subscribe(a.prefix+">", func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	return &n
}

// A quiet round asks for two acks, and what its acks cannot vouch for is
// published again with every publish acked: a message JetStream refuses in
// the middle of the round breaks the chain and is found and named, a replay
// of stored events is deduplicated, not stored twice.
func TestAckerQuietRound(t *testing.T) {
	ctx := context.Background()
	bus, a := ackerBus(t)
	acks := countAcks(t, a)
	msgs := func(prefix string, bad int) func(i int) (*nats.Msg, string, error) {
		return func(i int) (*nats.Msg, string, error) {
			m := &nats.Msg{Subject: "mailsync.user." + prefix + strconv.Itoa(i), Data: []byte("x"),
				Header: nats.Header{jetstream.MsgIDHeader: []string{prefix + strconv.Itoa(i)}}}
			if i == bad {
				m.Header.Set(jetstream.ExpectedStreamHeader, "NOSUCH")
			}
			return m, "uid=" + prefix + strconv.Itoa(i), nil
		}
	}
	flush := func() {
		if err := bus.NC.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	stored := func() uint64 {
		info, err := bus.Stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}

	// The test's own subscriber sees an ack in a goroutine of its own, after
	// the acker may already have returned: wait for the count, then give a
	// stray ack the time to show.
	settled := func(want int64) int64 {
		for deadline := time.Now().Add(5 * time.Second); acks.Load() < want && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		flush()
		time.Sleep(50 * time.Millisecond)
		return acks.Load()
	}

	seq, err := a.round(ctx, "event", 500, msgs("a", -1))
	flush()
	if n := settled(2); err != nil || seq != 500 || stored() != 500 || n != 2 {
		t.Fatalf("quiet round: seq %d err %v; %d stored, %d acks", seq, err, stored(), n)
	}
	seq, err = a.round(ctx, "event", 1, msgs("b", -1))
	flush()
	if n := settled(3); err != nil || seq != 501 || n != 3 {
		t.Fatalf("quiet round of one: seq %d err %v; %d acks", seq, err, n)
	}

	// Refused in the middle: the quiet round sees the gap, the acked one
	// names the entry; the others are stored.
	acks.Store(0)
	_, err = a.round(ctx, "event", 100, msgs("c", 37))
	flush()
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "event of uid=c37") {
		t.Fatalf("refused publish in a quiet round: %v", err)
	}
	// The acked round ends at its error, its later publishes are stored
	// meanwhile.
	for deadline := time.Now().Add(5 * time.Second); stored() < 501+99 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := stored(); n != 501+99 {
		t.Fatalf("%d stored after the refused round, want %d", n, 501+99)
	}
	// The acked round ends at its error; the rest of its acks follow.
	if n := settled(2 + 100); n != 2+100 {
		t.Fatalf("%d acks for the refused round, want 2 quiet and 100 acked", n)
	}

	// A replay: every event a duplicate, nothing stored again.
	seq, err = a.round(ctx, "event", 500, msgs("a", -1))
	if err != nil || seq != 500 || stored() != 600 {
		t.Fatalf("replayed round: seq %d err %v; %d stored", seq, err, stored())
	}

	// A round that publishes fewer messages than it planned ends, as a gap,
	// then fails where msg fails.
	r := a.begin("state", 3, true)
	a.publish(r, &nats.Msg{Subject: "mailsync.user.d", Data: []byte("z")}, "uid=d")
	if _, err := a.wait(ctx, r); !errors.Is(err, errGap) {
		t.Fatalf("short quiet round: %v", err)
	}
	boom := errors.New("boom")
	if _, err := a.round(ctx, "state", 3, func(i int) (*nats.Msg, string, error) {
		if i == 2 {
			return nil, "", boom
		}
		return &nats.Msg{Subject: "mailsync.user.e", Data: []byte("z")}, "uid=e", nil
	}); !errors.Is(err, boom) {
		t.Fatalf("round whose message fails: %v", err)
	}
}

// The case a count of sequences cannot see: a publish of a quiet round is
// lost (JetStream refuses it, unanswered) and another writer's message
// lands in the stream exactly where it would have been, so the first and
// last acks are n-1 sequences apart as if the round were whole. The chain
// of Nats-Expected-Last-Msg-Id breaks at the foreign message; the round is
// published again with every publish acked, which names the lost one. The
// entry states, chained by sequence (no other writer), find a lost publish
// the same way.
func TestAckerQuietRoundLostBesideAnotherWriter(t *testing.T) {
	ctx := context.Background()
	bus, a := ackerBus(t)
	stored := func() uint64 {
		info, err := bus.Stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	const n, lost = 100, 37
	for _, withIDs := range []bool{true, false} {
		before := stored()
		prefix := "ids" + strconv.FormatBool(withIDs) + "-"
		gapped := 0
		a.gapped = func(string, int) { gapped++ }
		foreign := 0
		_, err := a.round(ctx, "event", n, func(i int) (*nats.Msg, string, error) {
			if withIDs && i == lost+1 && foreign == 0 {
				// Same connection, so it reaches the stream right after the
				// lost publish and before this one.
				foreign++
				if _, err := bus.JS.Publish(ctx, "mailsync.user.foreign", []byte("retry")); err != nil {
					t.Fatal(err)
				}
			}
			m := &nats.Msg{Subject: "mailsync.user." + prefix + strconv.Itoa(i), Data: []byte("x"), Header: nats.Header{}}
			if withIDs {
				m.Header.Set(jetstream.MsgIDHeader, prefix+strconv.Itoa(i))
			}
			if i == lost {
				m.Header.Set(jetstream.ExpectedStreamHeader, "NOSUCH")
			}
			return m, "uid=" + prefix + strconv.Itoa(i), nil
		})
		if err == nil || !strings.Contains(err.Error(), "uid="+prefix+strconv.Itoa(lost)) {
			t.Errorf("ids %v: a publish lost in a quiet round went unnoticed: err %v", withIDs, err)
		}
		if gapped != 1 {
			t.Errorf("ids %v: quiet round published again %d times, want 1", withIDs, gapped)
		}
		if withIDs {
			// The acked round stores what the broken chain refused and
			// nothing twice; it ended at its error, its later publishes
			// are stored meanwhile.
			want := uint64(n - 1 + foreign)
			for deadline := time.Now().Add(5 * time.Second); stored()-before < want && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond)
			if got := stored() - before; got != want {
				t.Errorf("ids %v: %d stored, want %d", withIDs, got, want)
			}
		}
	}
}

// A quiet round of entry states (no Msg-Id, so not chained: one writer)
// proves itself with two acks; another write inside the round puts the
// two acks more than n-1 apart, which costs the round published again.
func TestAckerQuietRoundOfStates(t *testing.T) {
	ctx := context.Background()
	bus, a := ackerBus(t)
	gapped := 0
	a.gapped = func(string, int) { gapped++ }
	w := newKVWire(bus.Entries)
	msg := &nats.Msg{}
	for r := 0; r < 3; r++ {
		seq, err := a.round(ctx, "state", 200, func(i int) (*nats.Msg, string, error) {
			if r == 2 && i == 100 {
				if _, err := bus.Entries.Put(ctx, "other", []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			w.putMsg(msg, "k"+strconv.Itoa(i), []byte("v"+strconv.Itoa(r)))
			return msg, "uid=" + strconv.Itoa(i), nil
		})
		if err != nil || (r < 2 && seq != uint64(200*(r+1))) {
			t.Fatalf("round %d: seq %d, %v", r, seq, err)
		}
		if want := max(0, r-1); gapped != want {
			t.Errorf("after round %d: published again %d times, want %d", r, gapped, want)
		}
	}
	e, err := bus.Entries.Get(ctx, "k199")
	if err != nil || string(e.Value()) != "v2" {
		t.Fatalf("k199: %v", err)
	}
}
