package listener

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mailsync/event"
)

// A session hands its queued events to a pipeline in batches. The pipeline
// publishes a batch's events and waits for their acks, then writes the
// batch's entry states to KV and waits for those, then records the stream
// sequence the entries bucket covers. Two goroutines do this, one per step,
// so while batch N's states are being stored batch N+1's events are in
// flight, and meanwhile the session goes on reading the directory and
// queueing batch N+2. The guarantees stay those of the package doc:
//   - an entry's state is written only after its event was acked (a batch
//     reaches the state writer only once all its events are acked);
//   - batches are published and stored in the order they were queued, each
//     step on one connection, so a later state of an entry is never
//     overwritten by an earlier one;
//   - the cookie is saved only after sync, which waits until every batch
//     handed over is stored.
//
// A failure in either step stops the pipeline at once, as a crash would;
// the session sees the error at its next flush or sync.

// attrsSize is about the bytes a's values take in an event.
func attrsSize(a event.Attrs) int {
	n := 0
	for k, vs := range a {
		n += len(k) + 4
		for _, v := range vs {
			n += len(v) + 3
		}
	}
	return n
}

// dropPending forgets the events queued for the next batch.
func (l *Listener) dropPending() {
	l.pending, l.pendingBytes = nil, 0
}

// batch is a run of queued events published together.
type batch struct {
	n       uint64 // the batch's number in the session, from 1
	pubs    []pendingPub
	entries int           // known entries once the batch is stored, for the status
	seq     uint64        // highest stream sequence of its events, once acked
	done    chan struct{} // closed once its states are stored
}

type pipeline struct {
	l      *Listener
	ctx    context.Context
	cancel context.CancelCauseFunc
	events chan *batch // to the event publisher
	states chan *batch // from the event publisher to the state writer
	last   *batch      // the last batch handed over (session side)
	wg     sync.WaitGroup
}

func (l *Listener) startPipeline(ctx context.Context) *pipeline {
	pctx, cancel := context.WithCancelCause(ctx)
	p := &pipeline{l: l, ctx: pctx, cancel: cancel, events: make(chan *batch), states: make(chan *batch)}
	p.wg.Add(2)
	go p.publishLoop()
	go p.storeLoop()
	return p
}

func (p *pipeline) publishLoop() {
	defer p.wg.Done()
	defer close(p.states)
	for {
		var b *batch
		select {
		case <-p.ctx.Done():
			return
		case b = <-p.events:
		}
		if b == nil {
			return // stopped
		}
		if err := p.l.publishEvents(p.ctx, b); err != nil {
			p.cancel(err)
			return
		}
		select {
		case <-p.ctx.Done():
			return
		case p.states <- b:
		}
	}
}

func (p *pipeline) storeLoop() {
	defer p.wg.Done()
	for b := range p.states {
		if err := p.l.storeBatch(p.ctx, b); err != nil {
			p.cancel(err)
			return
		}
		close(b.done)
	}
}

// submit hands b over; it blocks while the pipeline is full.
func (p *pipeline) submit(b *batch) error {
	select {
	case <-p.ctx.Done():
		return context.Cause(p.ctx)
	case p.events <- b:
		p.last = b
		return nil
	}
}

// wait returns once every batch handed over is stored.
func (p *pipeline) wait() error {
	if p.last == nil {
		return nil
	}
	select {
	case <-p.last.done:
		return nil
	case <-p.ctx.Done():
		select {
		case <-p.last.done:
			return nil
		default:
			return context.Cause(p.ctx)
		}
	}
}

// stop lets the batches handed over be stored (unless the pipeline's
// context ends first) and ends the pipeline's goroutines.
func (p *pipeline) stop() {
	close(p.events)
	p.wg.Wait()
	p.cancel(nil)
}

// flush hands the queued events to the pipeline as one batch; without a
// pipeline (between sessions) it publishes and stores them itself.
func (l *Listener) flush(ctx context.Context) error {
	if l.confirm.Swap(false) {
		if err := l.releaseHeld(ctx); err != nil {
			return err
		}
	}
	if len(l.pending) == 0 {
		return nil
	}
	l.batches++
	b := &batch{n: l.batches, pubs: l.pending, entries: len(l.known), done: make(chan struct{})}
	// The next batch is sized like this one: a refresh's are full, and in
	// persist mode a batch is a change or two (BatchSize each, ~100 KB,
	// was most of what a burst of adds allocated here).
	l.pending, l.pendingBytes = make([]pendingPub, 0, len(b.pubs)), 0
	if l.pipe != nil {
		return l.pipe.submit(b)
	}
	if err := l.publishEvents(ctx, b); err != nil {
		return err
	}
	return l.storeBatch(ctx, b)
}

// sync flushes and waits until every event queued is published and its
// state stored. Only after sync returns may a cookie be saved.
func (l *Listener) sync(ctx context.Context) error {
	if err := l.flush(ctx); err != nil {
		return err
	}
	if l.pipe == nil {
		return nil
	}
	return l.pipe.wait()
}

// publishEvents publishes a batch's events and waits for JetStream's acks.
// It encodes each entry's state on the way, sharing the attributes' JSON
// with the event.
func (l *Listener) publishEvents(ctx context.Context, b *batch) error {
	// nats.go copies a message into its write buffer before PublishMsg
	// returns, so one message, header and event buffer serve the batch;
	// only the states, stored after the acks, are kept.
	var attrs, data []byte
	msgID := []string{""}
	msg := &nats.Msg{Header: nats.Header{jetstream.MsgIDHeader: msgID}}
	seq, err := l.acks.round(ctx, "event", len(b.pubs), func(i int) (*nats.Msg, string, error) {
		p := &b.pubs[i]
		var newJSON []byte
		if p.entry != nil {
			attrs = appendAttrs(attrs[:0], p.entry.Attrs)
			if p.state == nil {
				p.state = appendEntry(make([]byte, 0, len(attrs)+len(p.entry.DN)+128), p.entry, attrs)
			}
			// The event's New is the entry's attributes (queueEntry).
			newJSON = attrs
		}
		var err error
		if data, err = appendEvent(data[:0], &p.ev, newJSON); err != nil {
			return nil, "", fmt.Errorf("encode event for %s: %w", p.ev.DN, err)
		}
		msg.Subject, msg.Data, msgID[0] = p.ev.Subject(), data, p.ev.MsgID()
		return msg, p.ev.DN, nil
	})
	if err != nil {
		return fmt.Errorf("publish events: %w", err)
	}
	b.seq = seq
	l.setStatus(func(s *Status) { s.Published += uint64(len(b.pubs)) })
	if l.hooks.AfterPublish != nil {
		if err := l.hooks.AfterPublish(); err != nil {
			return fmt.Errorf("%w: %v", ErrCrash, err)
		}
	}
	return nil
}

// storeBatch writes a batch's entry states into the entries bucket, then
// records the stream sequence they cover.
func (l *Listener) storeBatch(ctx context.Context, b *batch) error {
	// The wire's headers and the message are copied by PublishMsg, so
	// reused for the batch (publishEvents); the acker chains them.
	w := newKVWire(l.bus.Entries)
	msg := &nats.Msg{}
	_, err := l.acks.round(ctx, "state", len(b.pubs), func(i int) (*nats.Msg, string, error) {
		p := &b.pubs[i]
		switch {
		case p.entry == nil:
			w.deleteMsg(msg, p.ev.UUID)
		case p.state != nil:
			w.putMsg(msg, p.ev.UUID, p.state)
		default:
			w.putMsg(msg, p.ev.UUID, appendEntry(nil, p.entry, nil))
		}
		return msg, p.ev.DN, nil
	})
	if err != nil {
		return fmt.Errorf("store entry states: %w", err)
	}
	if b.seq > 0 {
		if _, err := l.bus.State.Put(ctx, KeyEntriesSeq, []byte(strconv.FormatUint(b.seq, 10))); err != nil {
			return fmt.Errorf("store entries sequence: %w", err)
		}
	}
	l.staged.stored(b.pubs, b.n)
	l.setStatus(func(s *Status) { s.Entries = b.entries })
	return nil
}
