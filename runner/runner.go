// Package runner is the consumer side of the event stream: it feeds each
// handler (mailbox, aliases, homeserver) from its own durable JetStream
// consumer, named <handler>-<host>, so every mail host applies every event
// once.
//
// Guarantees:
//   - Per entry (entryUUID) events are applied in stream order; different
//     entries run in parallel, up to Config.Parallel at once.
//   - A Derived handler (the maps) converges to an entry's newest state:
//     an event overtaken by a later one of its entry already delivered is
//     acked without being decoded or handled; the later one is applied.
//   - A message is acked only after the handler returned, i.e. after its
//     side effect is durable. A crash redelivers it; handlers are idempotent.
//   - A retryable failure holds the message (InProgress keeps JetStream from
//     redelivering it) and retries it after an exponential backoff
//     (cenkalti/backoff). The entry's later events wait behind it; other
//     entries keep flowing. A plain NAK would let a later event of the same
//     entry overtake the failed one, so the delay is served here; held
//     messages are NAKed on shutdown for redelivery.
//   - A permanent failure is logged once with DN, entryUUID and reason,
//     recorded in the dead-letter stream MAILSYNC_DEAD, and terminated.
//     Errors nobody classified are retried up to MaxAttempts, then
//     dead-lettered.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"mailsync/address"
	"mailsync/event"
	"mailsync/fault"
	"mailsync/stream"
)

// HeaderOnly, on an event, names the one consumer meant to apply it (a
// retried dead letter); every other consumer acks it untouched.
const HeaderOnly = "Mailsync-Only"

// Handler applies events to one part of the mail system.
type Handler interface {
	Name() string
	Handle(ctx context.Context, ev event.Event) error
}

// Loader is a handler that derives its state from the whole directory: it
// is given every entry before the first event.
type Loader interface {
	Load(ctx context.Context, entries []event.Entry) error
}

// Derived is a Loader whose state derives wholly from the directory (the
// maps): events already reflected in the entries it was loaded with are
// acked without being handled again, so a start after a long stream costs
// one rebuild, not one write per event. It brings an entry to the state an
// event carries (New), whatever came before: its events are handed over
// without Old, which is not decoded (a dead letter still records it).
type Derived interface {
	Loader
	DerivedFromDirectory()
}

// Stager is a handler that applies a change in two steps: Stage, at once
// and in the entry's order, and the returned function, which waits until
// the change is durable (in a write it shares with the changes staged
// around it: the maps). The runner moves on to the entry's next event
// after Stage, and acks each event once its wait returns nil; a retryable
// error from the wait is retried by calling it again, never by staging the
// event again over the entry's later ones.
type Stager interface {
	Handler
	Stage(ctx context.Context, ev event.Event) (durable func(context.Context) error, err error)
}

// StagedAckPending is how many events a Stager's consumer may have
// delivered and unacked: a burst of that many changes can share a write.
const StagedAckPending = 1 << 16

// pullExpiry is how long one pull request of the consumer lasts.
const pullExpiry = 5 * time.Second

// DerivedLookahead is how many delivered events a Derived handler's
// consumer holds ahead of the lanes: of an entry's events among them, only
// the newest is decoded and handled (see dispatcher.overtaken).
const DerivedLookahead = 1 << 13

// Config tunes the runner. Zero values take the defaults noted.
type Config struct {
	// Host is this mail host's FQDN; it names the durable consumers.
	Host string
	// Parallel is how many entries are worked on at once (default 8).
	Parallel int
	// MaxAttempts bounds the retries of an error nobody classified
	// (default 10). Errors marked retryable are retried until they succeed.
	MaxAttempts int
	// InitialBackoff and MaxBackoff shape the retry delay (100ms, 30s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// AckWait is how long JetStream waits before redelivering an unacked
	// message (default 30s); held messages are kept alive well within it.
	AckWait time.Duration
	// StopGrace is how long a handler call under way when the runner is
	// told to stop may go on (default 20s, within systemd's 90 s stop
	// timeout): a mailbox rename is not cut between its steps, while a
	// call stuck on a dead server still ends.
	StopGrace time.Duration
	// Observer is told what happened to each event (metrics); optional.
	Observer Observer
}

// Observer learns what the runner did: the metrics package implements it.
type Observer interface {
	Applied(handler string, took, lag time.Duration)
	Failed(handler, class string)
	DeadLettered(handler string)
}

type noObserver struct{}

func (noObserver) Applied(string, time.Duration, time.Duration) {}
func (noObserver) Failed(string, string)                        {}
func (noObserver) DeadLettered(string)                          {}

// DeadLetter is the record of an event a handler could not apply.
type DeadLetter struct {
	Handler string `json:"handler"`
	Host    string `json:"host"`
	DN      string `json:"dn"`
	UUID    string `json:"uuid"`
	// Attrs names the attributes whose values were refused (package
	// address), when that was the reason.
	Attrs    []string    `json:"attrs,omitempty"`
	Reason   string      `json:"reason"`
	Attempts int         `json:"attempts"`
	Seq      uint64      `json:"seq"`
	Event    event.Event `json:"event"`
	At       time.Time   `json:"at"`
}

// DefaultAckWait is Config.AckWait's default.
const DefaultAckWait = 30 * time.Second

// Runner runs handlers against the stream.
type Runner struct {
	bus      *stream.Bus
	cfg      Config
	log      zerolog.Logger
	handlers []Handler

	readMu  sync.Mutex
	reading *directoryRead // the read of the entries bucket under way
}

// New returns a runner for the handlers.
func New(bus *stream.Bus, cfg Config, log zerolog.Logger, handlers ...Handler) *Runner {
	if cfg.Parallel == 0 {
		cfg.Parallel = 8
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.InitialBackoff == 0 {
		cfg.InitialBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 20 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	return &Runner{bus: bus, cfg: cfg, log: log.With().Str("component", "runner").Logger(), handlers: handlers}
}

// ConsumerName is the durable consumer of a handler on a host. JetStream
// names may not contain dots.
func ConsumerName(handler, host string) string {
	r := strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_")
	return r.Replace(handler + "-" + host)
}

// Run consumes until ctx ends, then drains: running handler calls finish
// (with a context that outlives ctx by Config.StopGrace) and are acked,
// queued and held messages are NAKed, and Run returns after that.
func (r *Runner) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, h := range r.handlers {
		g.Go(func() error { return r.runHandler(gctx, h) })
	}
	return g.Wait()
}

func (r *Runner) runHandler(ctx context.Context, h Handler) error {
	log := r.log.With().Str("handler", h.Name()).Logger()
	name := ConsumerName(h.Name(), r.cfg.Host)
	_, derived := h.(Derived)
	d := &dispatcher{r: r, h: h, log: log, derived: derived, only: name, lanes: map[string]*lane{}, latest: map[string]uint64{},
		newest: map[string]uint64{}, sem: make(chan struct{}, r.cfg.Parallel)}
	defer d.wg.Wait()
	if u, ok := h.(LatestUser); ok {
		u.UseLatest(r.Latest)
	}
	for {
		covered, err := r.load(ctx, h)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		d.covered.Store(covered)
		// A new consumer (a replay rewinds) delivers from where it says.
		d.mu.Lock()
		d.latest, d.newest = map[string]uint64{}, map[string]uint64{}
		d.mu.Unlock()
		cons, err := r.consumer(ctx, h, covered)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !r.consume(ctx, d, cons, name) {
			// Stopping: the calls under way finish and are acked before
			// Run returns and the connection closes.
			d.wg.Wait()
			return nil
		}
		log.Info().Str("consumer", name).Msg("consumer replaced or lost; reloading and fetching it again")
		// The old consumer's messages finish before the handler is loaded
		// again; their acks go nowhere, the new consumer delivers again.
		d.wg.Wait()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond): // let a replay recreate it
		}
	}
}

// consume feeds the consumer's events to the dispatcher until ctx ends
// (false) or the consumer is deleted or replaced under it (true: `mailsync
// replay` recreates it to rewind; start over as at startup).
//
// It uses Consume, whose callback is fed from a subscription that queues
// without limit, not Messages: that iterator reads from a channel of
// PullMaxMessages slots that data and status messages share, and a
// message arriving at a full channel is dropped by nats.go (a slow
// consumer). A dropped status message leaves the iterator's count of
// requested messages too high, so it stops asking while the consumer still
// holds thousands of events; the stream then stood still until the missed
// heartbeat (2 x 15s) ended the iterator, and the handler was loaded again
// from the whole directory. Starts at 100k stalled that way.
func (r *Runner) consume(ctx context.Context, d *dispatcher, cons jetstream.Consumer, name string) bool {
	created := cons.CachedInfo().Created
	ended := make(chan error, 1)
	end := func(err error) {
		select {
		case ended <- err:
		default:
		}
	}
	deliver := func(msg jetstream.Msg) { d.dispatch(ctx, msg) }
	if d.derived {
		// The events are fed to the lanes from a queue, so the ones
		// delivered ahead of them tell which events a later one of the
		// same entry overtakes (see overtaken). The callback waits while
		// the queue is full, as it waits for a lane without one.
		queue := make(chan jetstream.Msg, DerivedLookahead)
		var fed sync.WaitGroup
		fed.Go(func() {
			for msg := range queue {
				d.dispatch(ctx, msg)
			}
		})
		// Runs after the callback is stopped (the defer below).
		defer func() {
			close(queue)
			fed.Wait()
		}()
		deliver = func(msg jetstream.Msg) {
			d.delivered(msg)
			select {
			case queue <- msg:
			case <-ctx.Done():
				_ = msg.Nak()
			}
		}
	}
	// A callback still running when consume returns must not reach the
	// dispatcher, whose goroutines the caller waits for next.
	var cbMu sync.Mutex
	stopped := false
	defer func() {
		cbMu.Lock()
		stopped = true
		cbMu.Unlock()
	}()
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		cbMu.Lock()
		defer cbMu.Unlock()
		if stopped {
			_ = msg.Nak()
			return
		}
		deliver(msg)
	},
		jetstream.PullMaxMessages(512),
		// A pull whose count of outstanding messages goes wrong asks for
		// no more until it expires: bursts through the maps stood still
		// for the default 30 s (no message redelivered, the stream holding
		// thousands for the consumer) in about one round in five. A short
		// expiry bounds such a stall to a few seconds, for one request
		// every few seconds while idle.
		jetstream.PullExpiry(pullExpiry),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			switch {
			case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound):
				end(err)
			case errors.Is(err, jetstream.ErrNoHeartbeat):
				// Consume asks again by itself; a consumer replaced
				// meanwhile (no word of its deletion reached us) is
				// started over.
				go func() {
					c, err := r.bus.Stream.Consumer(ctx, name)
					if errors.Is(err, jetstream.ErrConsumerNotFound) || (err == nil && !c.CachedInfo().Created.Equal(created)) {
						end(jetstream.ErrConsumerDeleted)
					}
				}()
			default:
				d.log.Warn().Err(err).Msg("fetch events")
			}
		}))
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		d.log.Warn().Err(err).Str("consumer", name).Msg("consume events")
		return true
	}
	defer cc.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-ended:
		return true
	case <-cc.Closed():
		return ctx.Err() == nil && !r.bus.NC.IsClosed()
	}
}

// load gives a Loader handler every entry, as before the first event. It
// first waits for the listener's first complete refresh, so a handler is
// never loaded with half a directory; for a Derived handler it returns the
// stream sequence the loaded entries cover.
func (r *Runner) load(ctx context.Context, h Handler) (uint64, error) {
	l, ok := h.(Loader)
	if !ok {
		return 0, nil
	}
	if err := r.waitFirstRefresh(ctx, h.Name()); err != nil {
		return 0, err
	}
	covered, list, err := r.readDirectory(ctx)
	if err != nil {
		return 0, fmt.Errorf("load directory for %s: %w", h.Name(), err)
	}
	if err := l.Load(ctx, list); err != nil {
		return 0, fmt.Errorf("load directory into %s: %w", h.Name(), err)
	}
	if _, ok := h.(Derived); !ok {
		return 0, nil
	}
	return covered, nil
}

// directoryRead is one read of the entries bucket and the stream sequence
// it covers.
type directoryRead struct {
	done    chan struct{}
	covered uint64
	list    []event.Entry
	err     error
}

// readDirectory reads every entry, and the sequence the entries cover
// (read first, so the entries cover at least that much). Handlers loading
// at the same time (every Loader at a start) share one read and its
// entries, which they only read: at 100k entries a second copy was a
// fifth of the process's peak memory.
func (r *Runner) readDirectory(ctx context.Context) (uint64, []event.Entry, error) {
	r.readMu.Lock()
	if rd := r.reading; rd != nil {
		r.readMu.Unlock()
		select {
		case <-rd.done:
			return rd.covered, rd.list, rd.err
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
	rd := &directoryRead{done: make(chan struct{})}
	r.reading = rd
	r.readMu.Unlock()
	defer func() {
		r.readMu.Lock()
		r.reading = nil
		r.readMu.Unlock()
		close(rd.done)
	}()
	if e, err := r.bus.State.Get(ctx, stream.KeyEntriesSeq); err == nil {
		rd.covered, _ = strconv.ParseUint(string(e.Value()), 10, 64)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		rd.err = fmt.Errorf("read entries sequence: %w", err)
		return 0, nil, rd.err
	}
	at := map[string]int{} // a key given twice keeps its later value
	rd.err = stream.WalkEntries(ctx, r.bus.Entries, func(e event.Entry) error {
		if i, ok := at[e.UUID]; ok {
			rd.list[i] = e
			return nil
		}
		at[e.UUID] = len(rd.list)
		rd.list = append(rd.list, e)
		return nil
	})
	if rd.err != nil {
		rd.list = nil
	}
	return rd.covered, rd.list, rd.err
}

// waitFirstRefresh waits until the state bucket holds a sync cookie.
func (r *Runner) waitFirstRefresh(ctx context.Context, handler string) error {
	logged := false
	for {
		_, err := r.bus.State.Get(ctx, stream.KeyCookie)
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("read sync cookie for %s: %w", handler, err)
		}
		if !logged {
			r.log.Info().Str("handler", handler).Msg("waiting for the listener's first complete refresh of the directory")
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ConsumerConfig is the durable consumer of a handler on a host, delivering
// the whole stream. `mailsync replay` recreates it with a later start.
func ConsumerConfig(handler, host string, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName(handler, host),
		Description:   "mailsync handler " + handler + " on " + host,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: 4096,
		MaxDeliver:    -1,
	}
}

// consumerConfig is ConsumerConfig for h: a Stager may have many more
// events in flight.
func (r *Runner) consumerConfig(h Handler) jetstream.ConsumerConfig {
	c := ConsumerConfig(h.Name(), r.cfg.Host, r.cfg.AckWait)
	if _, ok := h.(Stager); ok {
		c.MaxAckPending = StagedAckPending
	}
	return c
}

// consumer gets the handler's durable consumer, creating it when missing.
// An existing one keeps where it delivers from (JetStream cannot change
// that; a replay sets it) and takes the rest of the current config. A new
// one for a Derived handler starts after covered, the sequence its load
// covers: a first start would otherwise have the whole stream delivered
// only to ack it unread (at 100k entries, most of the start).
func (r *Runner) consumer(ctx context.Context, h Handler, covered uint64) (jetstream.Consumer, error) {
	want := r.consumerConfig(h)
	for {
		c, err := r.bus.Stream.Consumer(ctx, want.Durable)
		if err == nil {
			have := c.CachedInfo().Config
			if have.AckWait == want.AckWait && have.MaxAckPending == want.MaxAckPending && have.MaxDeliver == want.MaxDeliver {
				return c, nil
			}
			want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = have.DeliverPolicy, have.OptStartSeq, have.OptStartTime
			if c, err = r.bus.Stream.UpdateConsumer(ctx, want); err != nil {
				return nil, fmt.Errorf("update consumer %s: %w", want.Durable, err)
			}
			return c, nil
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("read consumer %s: %w", want.Durable, err)
		}
		create := want
		if covered > 0 {
			create.DeliverPolicy, create.OptStartSeq = jetstream.DeliverByStartSequencePolicy, covered+1
		}
		c, err = r.bus.Stream.CreateConsumer(ctx, create)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			continue // created meanwhile (a replay): take that one
		}
		if err != nil {
			return nil, fmt.Errorf("create consumer %s: %w", want.Durable, err)
		}
		r.log.Info().Str("consumer", want.Durable).Uint64("from_seq", create.OptStartSeq).Msg("consumer created")
		return c, nil
	}
}

// dispatcher keeps one lane per entry with work queued, so an entry's
// events run in order while entries run in parallel.
type dispatcher struct {
	r   *Runner
	h   Handler
	log zerolog.Logger
	sem chan struct{}
	wg  sync.WaitGroup
	// covered is the stream sequence a Derived handler's last Load covers.
	covered atomic.Uint64
	// derived: the handler's state derives wholly from the directory.
	derived bool
	only    string // the consumer's name, as HeaderOnly names it

	mu    sync.Mutex
	lanes map[string]*lane
	// latest is the highest stream sequence taken up per entry (subject)
	// from the current consumer. An event below it is an earlier one
	// delivered again after its ack was lost (a NATS node died with it):
	// the entry's later event is applied already, so applying the earlier
	// one again would put the entry back into an older state.
	latest map[string]uint64
	// newest is, for a Derived handler, the highest stream sequence
	// delivered per entry (subject) from the current consumer, of the
	// events it is to apply.
	newest map[string]uint64
}

// delivered records msg's sequence in newest.
func (d *dispatcher) delivered(msg jetstream.Msg) {
	if only := msg.Headers().Get(HeaderOnly); only != "" && only != d.only {
		return
	}
	md, err := msg.Metadata()
	if err != nil {
		return
	}
	key, seq := msg.Subject(), md.Sequence.Stream
	d.mu.Lock()
	defer d.mu.Unlock()
	if seq > d.newest[key] {
		d.newest[key] = seq
	}
}

// overtaken tells whether a later event of msg's entry is delivered: it
// runs after msg in the entry's lane, and a Derived handler brings its
// state to the entry's state that event carries, whatever the events
// before it said. So msg need not be decoded or handled; it is acked at
// once. A crash or a stop before the later event is durable leaves that
// one unacked, and it is delivered again. (Decoding was most of what a
// burst of changes cost: 20k membership changes at 100k users touch about
// 5k groups, each about four times.)
func (d *dispatcher) overtaken(msg jetstream.Msg) bool {
	if !d.derived {
		return false
	}
	md, err := msg.Metadata()
	if err != nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return md.Sequence.Stream < d.newest[msg.Subject()]
}

// superseded tells whether msg is older than an event of its entry already
// taken up, and records msg's sequence otherwise.
func (d *dispatcher) superseded(msg jetstream.Msg) bool {
	md, err := msg.Metadata()
	if err != nil {
		return false
	}
	key, seq := msg.Subject(), md.Sequence.Stream
	d.mu.Lock()
	defer d.mu.Unlock()
	if seq < d.latest[key] {
		return true
	}
	d.latest[key] = seq
	return false
}

type lane struct {
	queue []jetstream.Msg
}

func (d *dispatcher) dispatch(ctx context.Context, msg jetstream.Msg) {
	if md, err := msg.Metadata(); err == nil && md.Sequence.Stream <= d.covered.Load() {
		// Already in the state the handler was loaded with (a start
		// delivers the whole stream so): acked here, without a lane.
		d.r.cfg.Observer.Applied(d.h.Name(), 0, time.Since(md.Timestamp))
		_ = msg.Ack()
		return
	}
	key := msg.Subject()
	d.mu.Lock()
	if l, ok := d.lanes[key]; ok {
		l.queue = append(l.queue, msg)
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	// A new lane waits for a free slot here, so the consumer is asked for
	// no more events meanwhile: at most Parallel lanes exist, not one
	// goroutine per delivered event.
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		_ = msg.Nak()
		return
	}
	l := &lane{queue: []jetstream.Msg{msg}}
	d.mu.Lock()
	d.lanes[key] = l
	d.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() { <-d.sem }()
		for {
			d.mu.Lock()
			if len(l.queue) == 0 {
				delete(d.lanes, key)
				d.mu.Unlock()
				return
			}
			m := l.queue[0]
			l.queue = l.queue[1:]
			d.mu.Unlock()
			if ctx.Err() != nil {
				// Stopping: nothing new starts.
				_ = m.Nak()
				d.abandon(key)
				return
			}
			if !d.process(ctx, m) {
				d.abandon(key)
				return
			}
		}
	}()
}

// abandon NAKs what a lane still holds when the runner stops.
func (d *dispatcher) abandon(key string) {
	d.mu.Lock()
	l := d.lanes[key]
	delete(d.lanes, key)
	d.mu.Unlock()
	if l == nil {
		return
	}
	for _, m := range l.queue {
		_ = m.Nak()
	}
}

// process applies one message; false means the runner is stopping and the
// message was handed back.
func (d *dispatcher) process(ctx context.Context, msg jetstream.Msg) bool {
	if only := msg.Headers().Get(HeaderOnly); only != "" && only != d.only {
		_ = msg.Ack()
		return true
	}
	if d.superseded(msg) {
		_ = msg.Ack()
		return true
	}
	if d.overtaken(msg) {
		if md, err := msg.Metadata(); err == nil {
			d.r.cfg.Observer.Applied(d.h.Name(), 0, time.Since(md.Timestamp))
		}
		_ = msg.Ack()
		return true
	}
	ev, err := d.decode(msg.Data())
	if err != nil {
		d.deadLetter(ctx, msg, event.Event{}, 1, fault.Permanent(fmt.Errorf("decode event on %s: %w", msg.Subject(), err)))
		return true
	}
	obs := d.r.cfg.Observer
	if md, err := msg.Metadata(); err == nil && md.Sequence.Stream <= d.covered.Load() {
		// Already in the state the handler was loaded with.
		obs.Applied(d.h.Name(), 0, time.Since(ev.At))
		_ = msg.Ack()
		return true
	}
	started := time.Now()
	st, staged := d.h.(Stager)
	applied := func() {
		obs.Applied(d.h.Name(), time.Since(started), time.Since(ev.At))
		var aerr error
		if staged {
			// Thousands are acked at once after a shared write: an ack
			// lost on the way is a redelivery, which the handler's
			// idempotence absorbs, not worth a round trip each.
			aerr = msg.Ack()
		} else {
			// The ack of a call that finished during shutdown still
			// goes out.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			aerr = msg.DoubleAck(actx)
			cancel()
		}
		if aerr != nil && ctx.Err() == nil {
			d.log.Warn().Err(aerr).Str("dn", ev.DN).Str("uuid", ev.UUID).Msg("ack event")
		}
	}
	if !staged {
		ok, stopped := d.retry(ctx, msg, ev, func(ctx context.Context) error {
			return d.inProgress(ctx, msg, func(ctx context.Context) error { return d.h.Handle(ctx, ev) })
		})
		if ok {
			applied()
		}
		return !stopped
	}
	var durable func(context.Context) error
	ok, stopped := d.retry(ctx, msg, ev, func(ctx context.Context) error {
		var err error
		durable, err = st.Stage(ctx, ev)
		return err
	})
	if !ok {
		return !stopped
	}
	// The entry's next event may be staged now; this one is acked once
	// durable. The lane's own count in wg is held, so Add is safe here.
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if ok, _ := d.retry(ctx, msg, ev, func(ctx context.Context) error { return d.inProgress(ctx, msg, durable) }); ok {
			applied()
		}
	}()
	return true
}

// decode reads an event; for a Derived handler without Old (see Derived),
// which is about half of a modify's bytes, and was most of what decoding
// a burst of membership changes cost.
func (d *dispatcher) decode(data []byte) (event.Event, error) {
	if !d.derived {
		var ev event.Event
		err := json.Unmarshal(data, &ev)
		return ev, err
	}
	var ev struct {
		event.Event
		Old unread `json:"old"` // the outer field takes "old"
	}
	err := json.Unmarshal(data, &ev)
	return ev.Event, err
}

// unread is a JSON value left unread.
type unread struct{}

func (*unread) UnmarshalJSON([]byte) error { return nil }

// retry runs fn until it succeeds (ok), holding msg while it backs off
// between retryable failures. A permanent failure, or too many
// unclassified ones, dead-letters msg. stopped means the runner is
// stopping and msg was handed back.
func (d *dispatcher) retry(ctx context.Context, msg jetstream.Msg, ev event.Event, fn func(context.Context) error) (ok, stopped bool) {
	obs := d.r.cfg.Observer
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = d.r.cfg.InitialBackoff
	bo.MaxInterval = d.r.cfg.MaxBackoff
	bo.MaxElapsedTime = 0
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return true, false
		}
		if ctx.Err() != nil {
			_ = msg.Nak()
			return false, true
		}
		switch {
		case fault.IsPermanent(err):
			obs.Failed(d.h.Name(), "permanent")
		case fault.IsRetryable(err):
			obs.Failed(d.h.Name(), "retryable")
		default:
			obs.Failed(d.h.Name(), "unclassified")
		}
		if fault.IsPermanent(err) {
			d.deadLetter(ctx, msg, ev, attempt, err)
			return false, false
		}
		if !fault.IsRetryable(err) && attempt >= d.r.cfg.MaxAttempts {
			d.deadLetter(ctx, msg, ev, attempt, fmt.Errorf("gave up after %d attempts: %w", attempt, err))
			return false, false
		}
		wait := bo.NextBackOff()
		lvl := d.log.Debug()
		if attempt == 1 {
			lvl = d.log.Warn()
		}
		lvl.Err(err).Str("dn", ev.DN).Str("uuid", ev.UUID).Int("attempt", attempt).Dur("retry_in", wait).Msg("handler failed; will retry")
		if !d.hold(ctx, msg, wait) {
			_ = msg.Nak()
			return false, true
		}
	}
}

// inProgress runs fn, telling JetStream the message is in progress while
// it works, so a long operation (a mailbox copied between hosts) is not
// redelivered under it.
func (d *dispatcher) inProgress(ctx context.Context, msg jetstream.Msg, fn func(context.Context) error) error {
	// A timer, not a goroutine with a ticker: a burst holds thousands of
	// staged events waiting at once.
	every := d.r.cfg.AckWait / 3
	var mu sync.Mutex
	done := false
	var t *time.Timer
	mu.Lock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			_ = msg.InProgress()
			t.Reset(every)
		}
	})
	mu.Unlock()
	defer func() {
		mu.Lock()
		done = true
		t.Stop()
		mu.Unlock()
	}()
	fctx, stop := d.finishing(ctx)
	defer stop()
	return fn(fctx)
}

// finishing is the context of one handler call: not cancelled when the
// runner is told to stop, only StopGrace after that, so a call under way
// completes and is acked instead of being cut and redelivered.
func (d *dispatcher) finishing(ctx context.Context) (context.Context, context.CancelFunc) {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	// The grace timer outlives a call that ends sooner only while the
	// runner stops; cancelling a finished call's context is harmless.
	stopWatch := context.AfterFunc(ctx, func() { time.AfterFunc(d.r.cfg.StopGrace, cancel) })
	return fctx, func() {
		stopWatch()
		cancel()
	}
}

// hold waits d while keeping msg from being redelivered.
func (d *dispatcher) hold(ctx context.Context, msg jetstream.Msg, wait time.Duration) bool {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(d.r.cfg.AckWait / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-tick.C:
			_ = msg.InProgress()
		}
	}
}

func (d *dispatcher) deadLetter(ctx context.Context, msg jetstream.Msg, ev event.Event, attempts int, cause error) {
	var seq uint64
	if md, err := msg.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	if d.derived && ev.UUID != "" {
		// The record keeps the event whole, Old included.
		var whole event.Event
		if json.Unmarshal(msg.Data(), &whole) == nil {
			ev = whole
		}
	}
	rec := DeadLetter{Handler: d.h.Name(), Host: d.r.cfg.Host, DN: ev.DN, UUID: ev.UUID,
		Attrs: address.Attributes(cause), Reason: cause.Error(), Attempts: attempts, Seq: seq, Event: ev, At: time.Now().UTC()}
	d.r.cfg.Observer.DeadLettered(d.h.Name())
	d.log.Error().Str("dn", ev.DN).Str("uuid", ev.UUID).Strs("attrs", rec.Attrs).Uint64("seq", seq).Str("reason", cause.Error()).
		Msg("event dead-lettered")
	data, _ := json.Marshal(rec)
	m := &nats.Msg{Subject: DeadSubject(d.h.Name(), d.r.cfg.Host, ev.UUID), Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s:%s:%d", d.h.Name(), d.r.cfg.Host, seq))
	if _, err := d.r.bus.JS.PublishMsg(ctx, m); err != nil {
		// Not recorded: leave the message for redelivery rather than lose it.
		d.log.Error().Err(err).Str("dn", ev.DN).Msg("record dead letter; event left for redelivery")
		_ = msg.NakWithDelay(d.r.cfg.MaxBackoff)
		return
	}
	_ = msg.Term()
}

// DeadSubject is where a handler's dead letters for an entry go.
func DeadSubject(handler, host, uuid string) string {
	if uuid == "" {
		uuid = "unknown"
	}
	return stream.DeadPrefix + "." + ConsumerName(handler, host) + "." + uuid
}
