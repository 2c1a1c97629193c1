package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"mailsync/runner"
	"mailsync/stream"
)

type replayCmd struct {
	From    string `required:"" help:"Stream sequence number, or time (RFC 3339, e.g. 2025-05-01T12:00:00Z), to re-apply events from." placeholder:"SEQ|TIME"`
	Handler string `help:"Only this handler's consumer (default: every handler the config enables)." placeholder:"H"`
}

// Run makes this host's handler consumers deliver again from a stream
// position. JetStream cannot move a durable consumer back, so each is
// deleted and created anew with a start sequence or time; a running
// runner notices, loads its handler again and consumes from there.
// Handlers are idempotent and every event carries the entry's whole state,
// so the replay converges to the current directory.
func (c replayCmd) Run(e *env) error {
	cfg, err := loadConfig(e.cfg)
	if err != nil {
		return err
	}
	seq, at, err := parseReplayFrom(c.From)
	if err != nil {
		return usageError{err}
	}
	handlers := cfg.Handlers
	if c.Handler != "" {
		if !cfg.Wants(c.Handler) {
			return usageError{fmt.Errorf("replay --handler %s: not one of this host's handlers %v", c.Handler, cfg.Handlers)}
		}
		handlers = []string{c.Handler}
	}
	return withBus(e, func(bus *stream.Bus) error {
		info, err := bus.Stream.Info(e.ctx)
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
		if seq > info.State.LastSeq+1 {
			return usageError{fmt.Errorf("replay --from %d: the stream ends at %d", seq, info.State.LastSeq)}
		}
		if seq != 0 && seq < info.State.FirstSeq {
			fmt.Fprintf(e.stdout, "events before %d are gone (stream max age); replaying from %d\n", info.State.FirstSeq, info.State.FirstSeq)
		}
		for _, h := range handlers {
			cc := runner.ConsumerConfig(h, cfg.Host, runner.DefaultAckWait)
			if seq != 0 {
				cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq
			} else {
				cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &at
			}
			if err := recreateConsumer(e.ctx, bus, cc); err != nil {
				return err
			}
			from := fmt.Sprintf("seq %d", seq)
			if seq == 0 {
				from = at.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(e.stdout, "%s: re-applying events from %s (stream at %d)\n", cc.Durable, from, info.State.LastSeq)
		}
		return nil
	})
}

// parseReplayFrom reads --from: a sequence number or an RFC 3339 time.
func parseReplayFrom(s string) (seq uint64, at time.Time, err error) {
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		if n == 0 {
			return 0, time.Time{}, errors.New("replay --from: sequence numbers start at 1")
		}
		return n, time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return 0, t, nil
	}
	return 0, time.Time{}, fmt.Errorf("replay --from %q: want a sequence number or an RFC 3339 time", s)
}

// recreateConsumer deletes a durable consumer and creates it with cc. A
// runner that saw it vanish may create it again in between (from the
// stream's start); then this deletes that one and tries again.
func recreateConsumer(ctx context.Context, bus *stream.Bus, cc jetstream.ConsumerConfig) error {
	for attempt := 1; ; attempt++ {
		err := bus.Stream.DeleteConsumer(ctx, cc.Durable)
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("delete consumer %s: %w", cc.Durable, err)
		}
		_, err = bus.Stream.CreateConsumer(ctx, cc)
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrConsumerExists) || attempt == 5 {
			return fmt.Errorf("create consumer %s: %w", cc.Durable, err)
		}
	}
}
