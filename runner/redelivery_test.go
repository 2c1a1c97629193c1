package runner_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"mailsync/internal/testenv"
	"mailsync/runner"
	"mailsync/stream"
)

// TestLostAckRedeliveryIsSuperseded: the ack of an entry's first event is
// lost (the server drops it: the runner's user may not publish that one
// ack), its second event is applied and acked, and JetStream delivers the
// first again. The runner must not apply it after the second: the entry
// would go back to its older state.
func TestLostAckRedeliveryIsSuperseded(t *testing.T) {
	testenv.Integration(t, "NATS JetStream")
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	// $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...: the first
	// delivery of stream sequence 1.
	lost := "$JS.ACK." + stream.StreamName + ".*.1.1.>"
	ns, err := stream.StartEmbedded(stream.EmbeddedOptions{StoreDir: t.TempDir(), Users: []*server.NkeyUser{{Nkey: pub,
		Permissions: &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{lost}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.Nkey(pub, kp.Sign), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	bus, err := stream.Open(context.Background(), nc, stream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const uuid = "7d0c1e2a-0000-4000-8000-00000000000a"
	publish(t, bus, uuid, "csn1")
	publish(t, bus, uuid, "csn2")

	h := &scripted{fails: map[string][]error{}, calls: map[string]int{}, at: map[string][]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	r := runner.New(bus, runner.Config{Host: "mail.example.org", AckWait: time.Second, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
		zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), h)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runner: %v", err)
		}
	}()

	// The first event was delivered again (three deliveries) and nothing
	// is left unacked.
	testenv.Eventually(t, 20*time.Second, func() error {
		c, err := bus.Stream.Consumer(ctx, runner.ConsumerName(h.Name(), "mail.example.org"))
		if err != nil {
			return err
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if ci.Delivered.Consumer < 3 || ci.NumAckPending != 0 {
			return fmt.Errorf("%d deliveries, %d unacked", ci.Delivered.Consumer, ci.NumAckPending)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	// csn2 may be applied more than once (delivered again while it waited
	// behind csn1's failing ack): the same state, no harm. csn1 after csn2
	// would be.
	got := h.appliedList()
	if len(got) < 2 || got[0] != uuid+":csn1" || got[len(got)-1] != uuid+":csn2" {
		t.Fatalf("applied %v; want csn1 first and csn2 last", got)
	}
	for _, a := range got[1:] {
		if a == uuid+":csn1" {
			t.Errorf("applied %v: the redelivered csn1 after csn2", got)
		}
	}
}
