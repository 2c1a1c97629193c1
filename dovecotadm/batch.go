package dovecotadm

import (
	"cmp"
	"context"
	"slices"
	"sync"

	"mailsync/fault"
)

// Requests: doveadm's HTTP API takes a list of commands per request and
// answers each under its tag. A request costs a round trip and a doveadm
// process's turn, so commands asked for at the same time (one per entry the
// mailbox handler converges) share requests: up to BatchSize commands in a
// request and InFlight requests at once. A call is sent at once when a
// request slot is free, so a lone call waits for nobody; commands queue
// only while every slot is busy, and the next free slot takes them all (up
// to BatchSize) in one request. Each caller gets its own command's answer:
// one entry's failure inside a request is that entry's alone.

// Defaults of WithBatch.
const (
	DefaultBatchSize = 50
	DefaultInFlight  = 4
)

// WithBatch sets how many commands one request carries at most and how
// many requests are in flight at once (defaults DefaultBatchSize and
// DefaultInFlight). size 1 sends every command in a request of its own.
func WithBatch(size, inFlight int) Option {
	return func(c *Client) {
		if size < 1 {
			size = 1
		}
		if inFlight < 1 {
			inFlight = 1
		}
		c.batch = &batcher{c: c, size: size, slots: inFlight}
	}
}

// request is one command of a request and, once answered, its outcome.
type request struct {
	name   string
	params map[string]any
	out    any

	ctx  context.Context
	err  error
	done chan struct{}
}

// batcher queues commands and sends them in shared requests.
type batcher struct {
	c     *Client
	size  int
	slots int

	mu    sync.Mutex
	queue []*request
	busy  int // requests in flight (each sender goroutine holds one)
}

// do runs cmd in the next request and returns its outcome. A caller whose
// ctx ends stops waiting; a command already sent still runs (every command
// the handler sends is idempotent).
func (b *batcher) do(ctx context.Context, cmd *request) error {
	cmd.ctx, cmd.done = ctx, make(chan struct{})
	b.mu.Lock()
	b.queue = append(b.queue, cmd)
	start := b.busy < b.slots
	if start {
		b.busy++
	}
	b.mu.Unlock()
	if start {
		go b.drain()
	}
	select {
	case <-cmd.done:
		return cmd.err
	case <-ctx.Done():
		return fault.Retryable(ctx.Err())
	}
}

// drain sends queued commands, a request at a time, until none are left.
func (b *batcher) drain() {
	for {
		b.mu.Lock()
		var batch []*request
		for len(b.queue) > 0 && len(batch) < b.size {
			cmd := b.queue[0]
			b.queue[0] = nil
			b.queue = b.queue[1:]
			if err := cmd.ctx.Err(); err != nil {
				cmd.err = fault.Retryable(err)
				close(cmd.done)
				continue
			}
			batch = append(batch, cmd)
		}
		if len(batch) == 0 {
			b.busy--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		// A mail command runs as its user's uid, and the doveadm process
		// keeps that uid for the commands after it in the request: a
		// server command there (kick, auth cache flush) can no longer
		// reach its socket and the process dies, taking every answer with
		// it. Server commands go first. (Every user is the one mail uid,
		// as on UCS; users of different uids could not share a request.)
		slices.SortStableFunc(batch, func(x, y *request) int {
			return cmp.Compare(sendOrder(x.name), sendOrder(y.name))
		})
		// The request outlives a caller that gives up (the others in it
		// still wait for their answers); the client's timeout bounds it.
		errs := b.c.send(context.WithoutCancel(batch[0].ctx), b.c.timeout, batch)
		for i, cmd := range batch {
			cmd.err = errs[i]
			close(cmd.done)
		}
	}
}

// serverCommand tells the commands doveadm runs with its own rights, not
// as a mail user's.
func serverCommand(name string) bool {
	switch name {
	case "kick", "authCacheFlush", "user", "who":
		return true
	}
	return false
}

// sendOrder ranks a command's place in a request: server commands first.
func sendOrder(name string) int {
	if serverCommand(name) {
		return 0
	}
	return 1
}
