package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mailsync/event"
	"mailsync/listener"
	"mailsync/runner"
	"mailsync/stream"
)

type statusCmd struct{}

// Run prints the stream position, the listener's cookie age and held
// deletes, and per handler consumer what is pending and dead-lettered.
func (statusCmd) Run(e *env) error {
	return withBus(e, func(bus *stream.Bus) error { return printStatus(e.ctx, e.stdout, bus) })
}

func printStatus(ctx context.Context, w io.Writer, bus *stream.Bus) error {
	info, err := bus.Stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("read stream: %w", err)
	}
	fmt.Fprintf(w, "stream %s: %d events, last seq %d", stream.StreamName, info.State.Msgs, info.State.LastSeq)
	if !info.State.LastTime.IsZero() {
		fmt.Fprintf(w, " at %s (%s ago)", info.State.LastTime.UTC().Format(time.RFC3339), age(info.State.LastTime))
	}
	fmt.Fprintln(w)
	if c, err := bus.State.Get(ctx, listener.KeyCookie); err == nil {
		fmt.Fprintf(w, "listener: sync cookie stored %s ago\n", age(c.Created()))
	} else if errors.Is(err, jetstream.ErrKeyNotFound) {
		fmt.Fprintln(w, "listener: no sync cookie yet (the first refresh has not finished)")
	} else {
		return fmt.Errorf("read cookie: %w", err)
	}
	if h, err := bus.State.Get(ctx, listener.KeyHeldDeletes); err == nil {
		var held listener.HeldDeletes
		_ = json.Unmarshal(h.Value(), &held)
		if len(held.UUIDs) > 0 {
			fmt.Fprintf(w, "listener: MASS-DELETE GUARD holds %d deletes of %d known entries since %s; confirm with `mailsync confirm-deletes`\n",
				len(held.UUIDs), held.Known, held.At.Format(time.RFC3339))
		}
	}
	poison, err := listener.LoadPoison(ctx, bus)
	if err != nil {
		return err
	}
	for _, p := range poison {
		fmt.Fprintf(w, "listener: SKIPPED entry %s (uuid %s) since %s: %s: %s; published once fixed in the directory\n",
			p.DN, p.UUID, p.At.Format(time.RFC3339), p.Attr, p.Reason)
	}
	if l, err := bus.State.Get(ctx, listener.KeyLease); err == nil {
		fmt.Fprintf(w, "listener: lease %s, renewed %s ago\n", string(l.Value()), age(l.Created()))
	}

	dead, err := deadCounts(ctx, bus)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSUMER\tPENDING\tUNACKED\tACKED TO\tDEAD")
	names := bus.Stream.ConsumerNames(ctx)
	var list []string
	for n := range names.Name() {
		list = append(list, n)
	}
	sort.Strings(list)
	for _, n := range list {
		c, err := bus.Stream.Consumer(ctx, n)
		if err != nil {
			return fmt.Errorf("read consumer %s: %w", n, err)
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return fmt.Errorf("read consumer %s: %w", n, err)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", n, ci.NumPending, ci.NumAckPending, ci.AckFloor.Stream, dead[n])
		delete(dead, n)
	}
	for n, c := range dead {
		fmt.Fprintf(tw, "%s\t-\t-\t-\t%d\n", n, c)
	}
	return tw.Flush()
}

// deadCounts counts dead letters per consumer name.
func deadCounts(ctx context.Context, bus *stream.Bus) (map[string]uint64, error) {
	info, err := bus.Dead.Info(ctx, jetstream.WithSubjectFilter(stream.DeadPrefix+".>"))
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	out := map[string]uint64{}
	for subj, n := range info.State.Subjects {
		parts := strings.SplitN(subj, ".", 3)
		if len(parts) == 3 {
			out[parts[1]] += n
		}
	}
	return out, nil
}

// deadConsumer names who recorded a dead letter: a handler's consumer, or
// the listener.
func deadConsumer(dl runner.DeadLetter) string {
	if dl.Handler == listener.DeadHandler {
		return dl.Handler
	}
	return runner.ConsumerName(dl.Handler, dl.Host)
}

func age(t time.Time) string {
	return time.Since(t).Round(time.Second).String()
}

type deadCmd struct {
	List  deadListCmd  `cmd:"" default:"1" help:"List dead-lettered events."`
	Retry deadRetryCmd `cmd:"" help:"Apply a dead-lettered change again, from the state the handler last saw to the directory's current state."`
	Drop  deadDropCmd  `cmd:"" help:"Forget dead-lettered events."`
}

type deadListCmd struct{}

func (deadListCmd) Run(e *env) error {
	return withBus(e, func(bus *stream.Bus) error {
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tCONSUMER\tAT\tDN\tREASON")
		err := eachDead(e.ctx, bus, func(seq uint64, dl runner.DeadLetter) error {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", seq, deadConsumer(dl),
				dl.At.Format(time.RFC3339), dl.DN, dl.Reason)
			return nil
		})
		if err != nil {
			return err
		}
		return tw.Flush()
	})
}

type deadDropCmd struct {
	Seq []uint64 `arg:"" optional:"" help:"Dead-letter sequence numbers (from dead list)."`
	All bool     `help:"Drop every dead letter."`
}

func (c deadDropCmd) Run(e *env) error {
	if len(c.Seq) == 0 && !c.All {
		return usageError{errors.New("dead drop: name sequence numbers or --all")}
	}
	return withBus(e, func(bus *stream.Bus) error {
		if c.All {
			if err := bus.Dead.Purge(e.ctx); err != nil {
				return fmt.Errorf("drop dead letters: %w", err)
			}
			fmt.Fprintln(e.stdout, "dropped all dead letters")
			return nil
		}
		for _, s := range c.Seq {
			if err := bus.Dead.DeleteMsg(e.ctx, s); err != nil {
				return fmt.Errorf("drop dead letter %d: %w", s, err)
			}
			fmt.Fprintf(e.stdout, "dropped %d\n", s)
		}
		return nil
	})
}

type deadRetryCmd struct {
	Seq []uint64 `arg:"" help:"Dead-letter sequence numbers (from dead list)."`
}

// Run republishes, for the one consumer that gave up, a change from the
// state it last saw (the dead event's old) to the directory's current state
// (the entries bucket). Replaying the dead event itself could undo later
// changes of the same entry. The dead letter is dropped once republished.
func (c deadRetryCmd) Run(e *env) error {
	return withBus(e, func(bus *stream.Bus) error {
		for _, seq := range c.Seq {
			m, err := bus.Dead.GetMsg(e.ctx, seq)
			if err != nil {
				return fmt.Errorf("read dead letter %d: %w", seq, err)
			}
			var dl runner.DeadLetter
			if err := json.Unmarshal(m.Data, &dl); err != nil {
				return fmt.Errorf("decode dead letter %d: %w", seq, err)
			}
			if dl.Handler == listener.DeadHandler {
				return fmt.Errorf("dead letter %d: entry %s could not be published (%s); fix it in the directory, "+
					"the listener publishes it then and drops this record", seq, dl.DN, strings.Join(dl.Attrs, ", "))
			}
			ev, err := repairEvent(e.ctx, bus, dl.Event)
			if err != nil {
				return fmt.Errorf("dead letter %d (%s): %w", seq, dl.DN, err)
			}
			data, _ := json.Marshal(ev)
			msg := &nats.Msg{Subject: ev.Subject(), Data: data, Header: nats.Header{}}
			msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("retry:%d:%s", seq, dl.At.Format(time.RFC3339Nano)))
			msg.Header.Set(runner.HeaderOnly, runner.ConsumerName(dl.Handler, dl.Host))
			if _, err := bus.JS.PublishMsg(e.ctx, msg); err != nil {
				return fmt.Errorf("republish dead letter %d: %w", seq, err)
			}
			if err := bus.Dead.DeleteMsg(e.ctx, seq); err != nil {
				return fmt.Errorf("drop retried dead letter %d: %w", seq, err)
			}
			fmt.Fprintf(e.stdout, "retrying %d for %s: %s %s\n", seq, runner.ConsumerName(dl.Handler, dl.Host), ev.Op, ev.DN)
		}
		return nil
	})
}

// repairEvent is the change from what a handler last saw (dead.Old) to the
// entry's current state.
func repairEvent(ctx context.Context, bus *stream.Bus, dead event.Event) (event.Event, error) {
	ev := event.Event{V: event.Version, Kind: dead.Kind, UUID: dead.UUID, Old: dead.Old, At: time.Now().UTC()}
	oldDN := dead.OldDN
	if oldDN == "" {
		oldDN = dead.DN
	}
	kv, err := bus.Entries.Get(ctx, dead.UUID)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		ev.Op, ev.DN = event.OpDelete, oldDN
		return ev, nil
	case err != nil:
		return ev, fmt.Errorf("read current state: %w", err)
	}
	var cur event.Entry
	if err := json.Unmarshal(kv.Value(), &cur); err != nil {
		return ev, fmt.Errorf("decode current state: %w", err)
	}
	ev.Kind, ev.DN, ev.New, ev.CSN = cur.Kind, cur.DN, cur.Attrs, cur.CSN
	ev.Op = event.OpModify
	if len(dead.Old) == 0 {
		ev.Op = event.OpAdd
	}
	if oldDN != cur.DN {
		ev.OldDN = oldDN
	}
	return ev, nil
}

func eachDead(ctx context.Context, bus *stream.Bus, fn func(uint64, runner.DeadLetter) error) error {
	info, err := bus.Dead.Info(ctx)
	if err != nil {
		return fmt.Errorf("read dead letters: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := bus.Dead.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read dead letter %d: %w", seq, err)
		}
		var dl runner.DeadLetter
		if err := json.Unmarshal(m.Data, &dl); err != nil {
			return fmt.Errorf("decode dead letter %d: %w", seq, err)
		}
		if err := fn(seq, dl); err != nil {
			return err
		}
	}
	return nil
}

func withBus(e *env, fn func(*stream.Bus) error) error {
	cfg, err := loadConfig(e.cfg)
	if err != nil {
		return err
	}
	bus, closeBus, err := openBus(e.ctx, cfg, false)
	if err != nil {
		return err
	}
	defer closeBus()
	return fn(bus)
}
