package runner_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/runner"
)

// slowCall is a handler whose call for "slow" waits until released, then
// reports whether its context had been cancelled under it.
type slowCall struct {
	started  chan struct{}
	release  chan struct{}
	ctxErr   chan error
	finished chan struct{}
}

func (b *slowCall) Name() string { return "slow" }

func (b *slowCall) Handle(ctx context.Context, ev event.Event) error {
	if ev.UUID != "slow" {
		return nil
	}
	close(b.started)
	<-b.release
	time.Sleep(50 * time.Millisecond) // a last step after the release
	b.ctxErr <- ctx.Err()
	close(b.finished)
	return ctx.Err()
}

// TestStopLetsRunningCallsFinish: a handler call under way when the runner
// is told to stop completes with a live context, is acked (no redelivery),
// and Run returns only after it.
func TestStopLetsRunningCallsFinish(t *testing.T) {
	bus := testenv.StartNATS(t).Bus(t)
	h := &slowCall{started: make(chan struct{}), release: make(chan struct{}), ctxErr: make(chan error, 1), finished: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	r := runner.New(bus, runner.Config{Host: "mail.example.org", StopGrace: 10 * time.Second},
		zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), h)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	publish(t, bus, "slow", "1")
	select {
	case <-h.started:
	case <-time.After(15 * time.Second):
		t.Fatal("handler not called")
	}
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while a handler call was under way", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(h.release)
	if err := <-h.ctxErr; err != nil {
		t.Errorf("the running call's context was cancelled under it: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the call finished")
	}
	select {
	case <-h.finished:
	default:
		t.Fatal("Run returned before the call finished")
	}
	cons, err := bus.Stream.Consumer(context.Background(), runner.ConsumerName(h.Name(), "mail.example.org"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream < 1 || info.NumAckPending != 0 {
		t.Errorf("the finished call's event was not acked: ack floor %d, %d pending", info.AckFloor.Stream, info.NumAckPending)
	}
}

// TestStopGraceBoundsAStuckCall: a call that does not end by itself is
// cancelled StopGrace after the stop, and its event is handed back.
func TestStopGraceBoundsAStuckCall(t *testing.T) {
	bus := testenv.StartNATS(t).Bus(t)
	stuck := &stuckHandler{started: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	r := runner.New(bus, runner.Config{Host: "mail.example.org", StopGrace: 300 * time.Millisecond},
		zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), stuck)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	publish(t, bus, "stuck", "1")
	select {
	case <-stuck.started:
	case <-time.After(15 * time.Second):
		t.Fatal("handler not called")
	}
	stopped := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return: the stuck call was never cancelled")
	}
	if took := time.Since(stopped); took < 250*time.Millisecond {
		t.Errorf("the stuck call was cut after %s, before its grace of 300ms", took)
	}
}

type stuckHandler struct{ started chan struct{} }

func (s *stuckHandler) Name() string { return "stuck" }

func (s *stuckHandler) Handle(ctx context.Context, ev event.Event) error {
	close(s.started)
	<-ctx.Done()
	return errors.Join(errors.New("dovecot did not answer"), ctx.Err())
}
