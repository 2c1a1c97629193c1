package mailbox

import (
	"context"
	"sync"

	"mailsync/event"
	"mailsync/fault"
)

// Staging: the runner hands a Stager many entries at once instead of
// Parallel lanes' worth (runner.Stager), and the handler converges up to
// StageParallel of them at the same time. What they ask of Dovecot at the
// same moment goes out in shared doveadm requests (package dovecotadm
// batches concurrent commands, 50 a request, 4 requests in flight), and
// their applied records and intent records share directory fsyncs
// (atomicfile.Dir), so a burst of new users costs about one doveadm
// command and two file fsyncs per user instead of a round trip each.
//
// Nothing else changes per entry: each is converged by the same
// converge, under its entry lock, with its own intent records and owner
// marker; entries converged together are independent (different
// entryUUIDs), and one entry's failure (a doveadm command of its own that
// failed, a refused address) is its own event's retry or dead letter. An
// entry's events are converged in the order they were staged: each waits
// for the first attempt of the one before it.

// StageParallel is how many entries the handler converges at once when the
// runner stages them: enough to fill DefaultInFlight requests of
// DefaultBatchSize commands and queue the next ones.
const StageParallel = 256

// StageQueue is how many staged events may wait for their first
// convergence at once. Stage waits for room beyond that, which holds the
// runner's lanes and so the consumer: the events of a burst larger than
// the handler converges quickly (a start over 100k users) wait in the
// stream, not each in a goroutine with its decoded event in this process
// (runner.StagedAckPending would let 65,536 in).
const StageQueue = 4 * StageParallel

// turn is an entry's staged event in its entry's order.
type turn struct{ done chan struct{} }

// Stage queues the event's entry for convergence and returns the wait
// that converges it (runner.Stager). The wait, called again after a
// retryable failure, converges again: the handler is level-triggered.
// A wait that has not begun converging when the runner stops (stage's
// context ends) gives up, so nothing new starts; one under way finishes
// with the wait's own context.
func (h *Handler) Stage(stage context.Context, ev event.Event) (func(context.Context) error, error) {
	if ok, err := handles(ev); !ok {
		return func(context.Context) error { return nil }, err
	}
	select {
	case h.queued <- struct{}{}:
	case <-stage.Done():
		return nil, fault.Retryable(stage.Err())
	}
	var dequeued sync.Once
	dequeue := func() { dequeued.Do(func() { <-h.queued }) }
	h.orderMu.Lock()
	prev := h.order[ev.UUID]
	mine := &turn{done: make(chan struct{})}
	h.order[ev.UUID] = mine
	h.orderMu.Unlock()
	var once sync.Once
	release := func() {
		once.Do(func() {
			close(mine.done)
			h.orderMu.Lock()
			if h.order[ev.UUID] == mine {
				delete(h.order, ev.UUID)
			}
			h.orderMu.Unlock()
		})
	}
	return func(ctx context.Context) error {
		defer release()
		// Its room in the queue is the first attempt's: a retry (after
		// a backoff the runner holds it for) takes none.
		defer dequeue()
		if prev != nil {
			select {
			case <-prev.done:
			case <-stage.Done():
				return fault.Retryable(stage.Err())
			}
		}
		select {
		case h.slots <- struct{}{}:
		case <-stage.Done():
			return fault.Retryable(stage.Err())
		}
		defer func() { <-h.slots }()
		return h.converge(ctx, ev.UUID, &ev, false)
	}, nil
}
