package postmap

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrClosed is what a Committer gives once it is closed.
var ErrClosed = errors.New("postmap: map writer closed")

// Committer is the group commit of one owner's tables, for every handler
// that materialises a Postfix map: a change joins the pending write and
// waits for it, and one goroutine makes the writes, one at a time, each
// after a coalescing window. While changes keep coming in a burst
// (burstJoins or more a window) the window is extended, so a burst costs
// about one write and a lone change one window. How long a burst may pause
// and how long it may last before it is written scale with what the last
// write cost: on a busy machine, where deliveries come in clumps and a
// write takes seconds, a write in the middle of a burst would hold the
// changes behind it up for about as long as it saves.
//
// A write under way is finished even when its waiters give up: their
// changes' acknowledgements depend on it, and a table is replaced whole or
// updated under postmap's lock either way.
type Committer struct {
	w       *Writer
	window  time.Duration
	collect Collect

	// writing is held for each write and by Exclusive: one at a time.
	writing chan struct{}
	kick    chan struct{}
	quit    chan struct{}
	done    chan struct{}

	mu      sync.Mutex
	pending *Batch // the write the next change will be part of
	joined  int    // changes that joined since the goroutine last looked
	closed  bool
	cost    time.Duration // how long the last write took
}

// Collect returns, when a write starts, the tables that now need
// installing, in the order to install them, and a function that learns how
// their installation went and returns the write's outcome, which the
// changes waiting for it get.
type Collect func() (tables []Table, installed func(err error) error)

// Batch is one write that changes share.
type Batch struct {
	done chan struct{}
	err  error
}

// Wait returns once the batch is written, with the write's outcome, or
// ctx's error when ctx ends first.
func (b *Batch) Wait(ctx context.Context) error {
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Batch) finish(err error) {
	b.err = err
	close(b.done)
}

// Coalescing of a burst (see Committer): a window with burstJoins changes
// or more goes on with the burst; the burst ends after quiet windows for
// the longer of two windows and an eighth of the last write's cost, or
// once it has lasted the longer of burstWindows windows and burstCosts
// writes, at most burstMax.
const (
	burstJoins   = 16
	burstWindows = 250
	burstCosts   = 4
	burstMax     = 15 * time.Second
)

// NewCommitter starts the group commit of tables written by w, collected
// by collect; window is how long a change waits for others (0 or less:
// none). Close stops it.
func NewCommitter(w *Writer, window time.Duration, collect Collect) *Committer {
	c := &Committer{w: w, window: window, collect: collect,
		writing: make(chan struct{}, 1), kick: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

// Join adds a change to the pending write, which it returns. The change
// must be in what the next Collect sees before Join is called.
func (c *Committer) Join() (*Batch, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	c.joined++
	if c.pending == nil {
		c.pending = &Batch{done: make(chan struct{})}
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	return c.pending, nil
}

// Exclusive waits for the write under way, if any, and runs f in place of
// the next write: the changes waiting for a write get f's outcome (f
// writes everything, such as a load of the whole directory), and no other
// write starts until f returns. f installs through w, under ctx.
func (c *Committer) Exclusive(ctx context.Context, f func(ctx context.Context, w *Writer) error) error {
	select {
	case c.writing <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.writing }()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	b := c.pending
	c.pending = nil
	c.mu.Unlock()
	started := time.Now()
	err := f(ctx, c.w)
	c.setCost(time.Since(started))
	if b != nil {
		b.finish(err)
	}
	return err
}

// Close writes what is pending and stops the goroutine; later Joins and
// Exclusives fail with ErrClosed.
func (c *Committer) Close() {
	c.mu.Lock()
	closed := c.closed
	c.closed = true
	c.mu.Unlock()
	if closed {
		<-c.done
		return
	}
	close(c.quit)
	<-c.done
}

func (c *Committer) run() {
	defer close(c.done)
	for {
		select {
		case <-c.kick:
		case <-c.quit:
			c.flush()
			return
		}
		c.coalesce()
		c.flush()
	}
}

// coalesce waits out the window, extended while a burst goes on.
func (c *Committer) coalesce() {
	if c.window <= 0 {
		return
	}
	c.mu.Lock()
	cost := c.cost
	c.mu.Unlock()
	pause := max(2*c.window, cost/8)
	last := min(max(burstWindows*c.window, burstCosts*cost), burstMax)
	started := time.Now()
	t := time.NewTimer(c.window)
	defer t.Stop()
	c.takeJoined()
	var quietSince time.Time // the first of the quiet windows in a row
	for w := 1; time.Since(started) < last; w++ {
		select {
		case <-t.C:
		case <-c.quit:
			return
		}
		switch joined := c.takeJoined(); {
		case w == 1 && joined == 0:
			return // a lone change
		case joined < burstJoins:
			// A burst can pause (a fetch, the scheduler): only a pause
			// longer than pause ends it.
			if quietSince.IsZero() {
				quietSince = time.Now().Add(-c.window)
			}
			if time.Since(quietSince) >= pause {
				return
			}
		default:
			quietSince = time.Time{}
		}
		t.Reset(c.window)
	}
}

func (c *Committer) setCost(d time.Duration) {
	c.mu.Lock()
	c.cost = d
	c.mu.Unlock()
}

func (c *Committer) takeJoined() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.joined
	c.joined = 0
	return n
}

// flush makes the pending write, if any. It runs under a context of its
// own: see Committer.
func (c *Committer) flush() {
	c.writing <- struct{}{}
	defer func() { <-c.writing }()
	c.mu.Lock()
	b := c.pending
	c.pending = nil
	c.mu.Unlock()
	if b == nil {
		return
	}
	started := time.Now()
	tables, installed := c.collect()
	err := c.w.Install(context.Background(), tables...)
	if installed != nil {
		err = installed(err)
	}
	if len(tables) > 0 {
		c.setCost(time.Since(started))
	}
	b.finish(err)
}
