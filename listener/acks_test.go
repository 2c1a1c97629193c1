package listener

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mailsync/stream"
)

// ackBus is an embedded JetStream with mailsync's stream (testenv cannot be
// imported here: it imports this package).
func ackBus(t *testing.T) *stream.Bus {
	t.Helper()
	ns, err := stream.StartEmbedded(stream.EmbeddedOptions{StoreDir: t.TempDir(), Port: -1})
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

func TestAckerRounds(t *testing.T) {
	ctx := context.Background()
	bus := ackBus(t)
	a, err := newAcker(bus.NC)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()

	// Two rounds in flight at once, as the pipeline has them.
	r1, r2 := a.start("event", 300), a.start("state", 300)
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
	r := a.start("event", 2)
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
	r = a.start("state", 1)
	a.publish(r, &nats.Msg{Subject: "nostream.here", Data: []byte("z")}, "uid=lost")
	if _, err = a.wait(ctx, r); !errors.Is(err, jetstream.ErrNoStreamResponse) || !strings.Contains(err.Error(), "uid=lost") {
		t.Fatalf("publish without a stream: %v", err)
	}

	// An ended context ends the wait.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	r = a.start("event", 1)
	if _, err := a.wait(cctx, r); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("empty round with an ended context: %v", err)
	}
}

func TestParseAck(t *testing.T) {
	for _, c := range []struct {
		data string
		seq  uint64
		err  bool
	}{
		{`{"stream":"MAILSYNC","seq":42}`, 42, false},
		{`{"stream":"MAILSYNC","domain":"hub","seq":7,"duplicate":true}`, 7, false},
		{`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"MAILSYNC","seq":0}`, 0, true},
		{`{"stream":"MAILSYNC","seq":3,"error":{"code":500,"description":"odd order"}}`, 0, true},
		{`{"stream":""}`, 0, true},
		{`not json`, 0, true},
	} {
		seq, err := parseAck(&nats.Msg{Data: []byte(c.data)})
		if seq != c.seq || (err != nil) != c.err {
			t.Errorf("%s: seq %d err %v", c.data, seq, err)
		}
	}
}
