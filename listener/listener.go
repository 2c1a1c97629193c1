// Package listener turns an LDAP directory's changes into mailsync events on
// JetStream, using RFC 4533 content synchronisation (syncrepl,
// refreshAndPersist) against OpenLDAP's syncprov.
//
// Guarantees:
//   - Identity is the entryUUID: a modrdn (a user moved to another OU) is one
//     modify event with old_dn, never a delete and an add.
//   - Every event carries `old`, the state the listener last published for the
//     entry, kept in the KV bucket "entries" and mirrored in memory.
//   - Nothing is lost: an event is acked by JetStream before the entry's KV
//     state is written, and the KV state before the sync cookie. A crash at
//     any point replays from the previous cookie; the replayed events carry
//     the same Nats-Msg-Id and are deduplicated.
//   - Deletes are never lost: refreshDelete, refreshPresent, syncIdSet and
//     e-syncRefreshRequired are all handled; after a full or present-mode
//     refresh, every known entryUUID that the directory no longer has becomes a
//     delete.
//   - A refresh that would delete a large share of the known entries is held
//     (mass-delete guard) until an operator confirms it.
//   - Several listeners may run against one JetStream; only the holder of the
//     lease (state key listener_lease, compare-and-set on its revision) follows
//     the directory and publishes. A holder that loses the lease stops at
//     once; a standby takes over when the lease has not been renewed for
//     LeaseTTL, and starts from the entries bucket and the stored cookie.
package listener

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-ldap/ldap/v3"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/listener/syncrepl"
	"mailsync/stream"
)

// Keys in the state bucket.
const (
	KeyCookie        = stream.KeyCookie
	KeyHeldDeletes   = "held_deletes"
	KeyConfirmDelete = "confirm_deletes"
	// KeyEntriesSeq is the stream sequence up to which the entries bucket
	// holds every published event's state.
	KeyEntriesSeq = stream.KeyEntriesSeq
)

// Config is what the listener needs to follow a directory.
type Config struct {
	URL          string
	BindDN       string
	BindPassword string
	BaseDN       string
	// StartTLS upgrades an ldap:// connection; TLS verifies the server.
	StartTLS bool
	TLS      *tls.Config
	// MassDeleteShare and MassDeleteMin: a refresh whose deletes exceed both
	// (share of the known entries, and count) is held. Defaults 0.10 and 20.
	MassDeleteShare float64
	MassDeleteMin   int
	// ConfirmMassDelete publishes held deletes without waiting for an
	// operator (the config switch).
	ConfirmMassDelete bool
	// BatchSize is the number of events published together during a
	// refresh (default 500). Two batches are in flight at once (one's
	// events, the previous one's states; see publish.go), so about twice as
	// many messages await acks; keep it under half of nats.go's async
	// publish limit (4000).
	BatchSize int
	// BatchBytes bounds a batch by the size of its attributes (about its
	// events' and states' bytes) as BatchSize bounds it by count (default
	// 16 MiB): a refresh of large groups then neither holds hundreds of
	// megabytes nor comes near the 128 MB a JetStream stream queues before
	// it drops what it receives (see acker on why that matters).
	BatchBytes int
	// MaxValueBytes caps the size of one attribute value (default
	// DefaultMaxValueBytes, 64 KiB): an entry with a larger value is not
	// published but reported and skipped until it is fixed (poison.go),
	// as is one whose event exceeds the stream's maximum message size.
	MaxValueBytes int
	// MaxBackoff caps the reconnect delay (default 5s).
	MaxBackoff time.Duration
	// LeaseID names this listener in the lease: HolderID for a daemon
	// (default host:pid:random, new with every start).
	LeaseID string
	// LeaseTTL is how long an unrenewed lease stays with its holder
	// (default 3s); the holder renews it every LeaseRenew (default 1s).
	LeaseTTL   time.Duration
	LeaseRenew time.Duration
	// Flavor is the directory server's dialect of RFC 4533: OpenLDAP's
	// syncprov (the zero value) or 389-DS's Content Synchronization plugin.
	Flavor Flavor
}

// Hooks let tests inject a crash at the places where one matters.
type Hooks struct {
	// AfterPublish runs after a batch of events was acked by JetStream and
	// before their KV states and the cookie are written. An error aborts the
	// listener there, as a crash would.
	AfterPublish func() error
	// KeepLeaseOnExit leaves the lease in place when Run returns, as a
	// killed process would: a standby must wait for it to expire.
	KeepLeaseOnExit bool
}

// HeldDeletes is the record of a refresh held by the mass-delete guard.
type HeldDeletes struct {
	UUIDs []string  `json:"uuids"`
	Known int       `json:"known"`
	At    time.Time `json:"at"`
}

// Status is what `mailsync status` shows of the listener.
type Status struct {
	// Active: this listener holds the lease and follows the directory,
	// since ActiveSince.
	Active      bool
	ActiveSince time.Time
	Connected   bool
	Refreshing  bool
	Entries     int
	Published   uint64
	CookieAt    time.Time
	HeldDeletes int
	LastError   string
	// Poison lists the entries skipped because their event cannot be
	// published (poison.go), sorted by DN.
	Poison []Poison
}

// Listener follows one directory. Run it once; it reconnects by itself.
type Listener struct {
	cfg   Config
	bus   *stream.Bus
	log   zerolog.Logger
	hooks Hooks

	// known is a compact mirror of KV "entries": enough to tell whether an
	// entry changed; its attributes are read from KV when an event needs
	// them as `old`. staged holds the states queued for publishing and not
	// yet in KV (entry nil: deleted); the pipeline unstages a batch's
	// states once KV has acked them, under stagedMu.
	known  map[string]knownEntry
	staged map[string]staged
	// acks publishes events and states (set while the listener is active)
	acks     *acker
	stagedMu sync.Mutex

	// per-session state: the events queued for the next batch, the number
	// of batches handed to the pipeline, and the pipeline (nil between
	// sessions).
	pending      []pendingPub
	pendingBytes int // attrsSize of the pending events, old and new
	batches      uint64
	pipe         *pipeline

	// poison holds the entries skipped as unpublishable, by entryUUID (a
	// copy of KeyPoison); maxEvent is the largest event the stream takes.
	poison   map[string]Poison
	maxEvent int

	// work serialises the session loop and an operator's confirmation,
	// which both touch known and pending.
	work    sync.Mutex
	confirm atomic.Bool

	leaseRev atomic.Uint64 // revision of the lease held, 0 when standby

	mu     sync.Mutex
	status Status
}

// staged is an entry state queued for publishing, and the batch it is in.
type staged struct {
	entry *event.Entry
	batch uint64
}

type knownEntry struct {
	dn   string
	kind event.Kind
	csn  string
	sum  uint64
}

func compact(e event.Entry) knownEntry {
	return knownEntry{dn: e.DN, kind: e.Kind, csn: e.CSN, sum: attrSum(e.Attrs)}
}

// attrSum is a 64-bit FNV-1a digest of the attributes in a canonical order.
// It is FNV-1a written out (hash/fnv gives the same sums) because it runs
// for every entry of a refresh and hash/fnv allocates per string.
func attrSum(a event.Attrs) uint64 {
	h := uint64(fnvOffset64)
	for _, name := range event.Followed {
		vals, ok := a[name]
		if !ok {
			continue
		}
		h = fnvByte(fnvString(h, name), 0)
		for _, v := range vals {
			h = fnvByte(fnvString(h, v), 1)
		}
		h = fnvByte(h, 2)
	}
	return h
}

const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

func fnvByte(h uint64, b byte) uint64 {
	h ^= uint64(b)
	return h * fnvPrime64
}

// oldState returns what the listener last published for uuid.
func (l *Listener) oldState(ctx context.Context, uuid string) (event.Attrs, error) {
	l.stagedMu.Lock()
	s, ok := l.staged[uuid]
	l.stagedMu.Unlock()
	if ok && s.entry != nil {
		return s.entry.Attrs, nil
	}
	kv, err := l.bus.Entries.Get(ctx, uuid)
	if err != nil {
		return nil, fmt.Errorf("read stored state of %s: %w", uuid, err)
	}
	var e event.Entry
	if err := json.Unmarshal(kv.Value(), &e); err != nil {
		return nil, fmt.Errorf("decode stored state of %s: %w", uuid, err)
	}
	return e.Attrs, nil
}

type pendingPub struct {
	ev    event.Event
	entry *event.Entry // nil for a delete
	state []byte       // entry encoded for KV, once the event is published
}

// stage records the state an event queued in the current batch publishes.
func (l *Listener) stage(uuid string, e *event.Entry) {
	l.stagedMu.Lock()
	l.staged[uuid] = staged{entry: e, batch: l.batches + 1}
	l.stagedMu.Unlock()
}

// ErrCrash is returned when a test hook aborted the listener.
var ErrCrash = errors.New("listener aborted by test hook")

// New returns a listener publishing to bus.
func New(cfg Config, bus *stream.Bus, log zerolog.Logger, hooks Hooks) *Listener {
	if cfg.MassDeleteShare == 0 {
		cfg.MassDeleteShare = 0.10
	}
	if cfg.MassDeleteMin == 0 {
		cfg.MassDeleteMin = 20
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 500
	}
	if cfg.BatchBytes == 0 {
		cfg.BatchBytes = 16 << 20
	}
	if cfg.MaxValueBytes == 0 {
		cfg.MaxValueBytes = DefaultMaxValueBytes
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if cfg.LeaseID == "" {
		cfg.LeaseID = defaultLeaseID()
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseRenew == 0 {
		cfg.LeaseRenew = DefaultLeaseRenew
	}
	return &Listener{cfg: cfg, bus: bus, log: log.With().Str("component", "listener").Logger(), hooks: hooks}
}

// Status returns a snapshot of the listener's state.
func (l *Listener) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.status
}

func (l *Listener) setStatus(f func(*Status)) {
	l.mu.Lock()
	f(&l.status)
	l.mu.Unlock()
}

// Run follows the directory until ctx ends: it waits for the lease, follows
// the directory while it holds it, and goes back to waiting when it loses
// it. Connection failures are retried with backoff forever; only a test
// hook's crash, a failure to load the stored state, or ctx ends it. On
// return the lease is released, so a standby takes over at once.
func (l *Listener) Run(ctx context.Context) error {
	if !l.hooks.KeepLeaseOnExit {
		defer l.releaseLease()
	}
	for {
		rev, acquired, err := l.acquireLease(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		l.leaseRev.Store(rev)
		l.log.Info().Str("id", l.cfg.LeaseID).Msg("listener lease taken; following the directory")
		l.setStatus(func(s *Status) { s.Active, s.ActiveSince = true, time.Now() })
		actx, lost := context.WithCancelCause(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.keepLease(actx, rev, acquired, func() { lost(errLeaseLost) })
		}()
		err = l.active(actx)
		lost(nil)
		wg.Wait()
		l.setStatus(func(s *Status) { s.Active, s.Connected = false, false })
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(context.Cause(actx), errLeaseLost) {
			return err
		}
		// Lost the lease: forget the session's state and stand by.
		l.work.Lock()
		l.dropPending()
		l.known = nil
		l.work.Unlock()
		l.leaseRev.Store(0)
	}
}

// active follows the directory while ctx lasts (the lease is held), from
// the entries bucket and the stored cookie as they are now.
func (l *Listener) active(ctx context.Context) error {
	acks, err := newAcker(l.bus.NC)
	if err != nil {
		return err
	}
	defer acks.close()
	acks.gapped = func(what string, n int) {
		l.log.Warn().Str("what", what).Int("publishes", n).
			Msg("a batch's acks did not account for every publish; published again, each acked")
	}
	l.acks = acks
	if err := l.loadKnown(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = l.cfg.MaxBackoff
	bo.MaxElapsedTime = 0
	wctx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopWatch()
	wg.Add(1)
	go func() { defer wg.Done(); l.watchConfirm(wctx) }()
	for {
		started := time.Now()
		err := l.session(ctx)
		l.setStatus(func(s *Status) {
			s.Connected = false
			if err != nil {
				s.LastError = err.Error()
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrCrash) {
			return err
		}
		// Changes queued but not handed to the publisher when the session
		// failed are gone, yet known already holds their states: start the
		// next session from what the stream and the entries bucket hold,
		// or those changes would look unchanged and never be published.
		l.work.Lock()
		rerr := l.loadKnown(ctx)
		l.work.Unlock()
		if rerr != nil && ctx.Err() == nil {
			l.log.Error().Err(rerr).Msg("reload entry states after an interrupted sync")
		}
		if time.Since(started) > 30*time.Second {
			bo.Reset()
		}
		d := bo.NextBackOff()
		l.log.Warn().Err(err).Dur("retry_in", d).Str("url", l.cfg.URL).Msg("directory sync interrupted")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

// loadKnown reads the entries bucket through a watcher (never a key
// listing, which can come back partial on a cluster, nats-server#4824) and
// checks the count against the bucket's status.
func (l *Listener) loadKnown(ctx context.Context) error {
	l.dropPending() // what was not published is found again by the next refresh
	known := make(map[string]knownEntry)
	err := stream.WalkEntries(ctx, l.bus.Entries, func(e event.Entry) error {
		known[e.UUID] = compact(e)
		return nil
	})
	if err != nil {
		return err
	}
	l.known = known
	l.stagedMu.Lock()
	l.staged = make(map[string]staged)
	l.stagedMu.Unlock()
	if l.poison, err = loadPoison(ctx, l.bus); err != nil {
		return err
	}
	l.maxEvent = maxEventSize(l.bus.NC, l.bus.Stream)
	l.setStatus(func(s *Status) { s.Poison = poisonList(l.poison) })
	if err := l.recoverFromStream(ctx); err != nil {
		return err
	}
	l.setStatus(func(s *Status) { s.Entries = len(known) })
	if h, err := l.heldDeletes(ctx); err == nil && h != nil {
		l.setStatus(func(s *Status) { s.HeldDeletes = len(h.UUIDs) })
	}
	return nil
}

// recoverFromStream brings the entries bucket up to the stream: events that
// were acked but whose state was not yet written (a crash between the two)
// are applied from the stream itself, so the next event for such an entry
// carries the right old state and a replayed change is no change.
func (l *Listener) recoverFromStream(ctx context.Context) error {
	var from uint64
	if e, err := l.bus.State.Get(ctx, KeyEntriesSeq); err == nil {
		from, _ = strconv.ParseUint(string(e.Value()), 10, 64)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("read entries sequence: %w", err)
	}
	info, err := l.bus.Stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("read stream info: %w", err)
	}
	last := info.State.LastSeq
	if from == 0 && len(l.known) == 0 {
		from = info.State.FirstSeq - 1
		if info.State.Msgs == 0 {
			from = last
		}
	}
	for seq := from + 1; seq <= last; seq++ {
		m, err := l.bus.Stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read event %d from stream: %w", seq, err)
		}
		var ev event.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return fmt.Errorf("decode event %d: %w", seq, err)
		}
		if ev.Op == event.OpDelete {
			delete(l.known, ev.UUID)
			l.pending = append(l.pending, pendingPub{ev: ev})
		} else {
			e := event.Entry{UUID: ev.UUID, DN: ev.DN, Kind: ev.Kind, Attrs: ev.New, CSN: ev.CSN}
			l.known[ev.UUID] = compact(e)
			l.pending = append(l.pending, pendingPub{ev: ev, entry: &e})
		}
	}
	if len(l.pending) > 0 {
		l.log.Warn().Int("events", len(l.pending)).Msg("entry states behind the stream; recovered from it")
	}
	b := &batch{pubs: l.pending, entries: len(l.known), seq: last}
	l.dropPending()
	return l.storeBatch(ctx, b)
}

func (l *Listener) dial() (*ldap.Conn, error) {
	var opts []ldap.DialOpt
	if l.cfg.TLS != nil {
		opts = append(opts, ldap.DialWithTLSConfig(l.cfg.TLS))
	}
	conn, err := ldap.DialURL(l.cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", l.cfg.URL, err)
	}
	if l.cfg.StartTLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if l.cfg.TLS != nil {
			tc = l.cfg.TLS.Clone()
		}
		if tc.ServerName == "" {
			if u, err := url.Parse(l.cfg.URL); err == nil {
				tc.ServerName = u.Hostname()
			}
		}
		if err := conn.StartTLS(tc); err != nil {
			conn.Close()
			return nil, fmt.Errorf("starttls to %s: %w", l.cfg.URL, err)
		}
	}
	if l.cfg.BindDN != "" {
		if err := conn.Bind(l.cfg.BindDN, l.cfg.BindPassword); err != nil {
			conn.Close()
			// the password never appears in the error
			return nil, fmt.Errorf("bind as %s: %w", l.cfg.BindDN, err)
		}
	}
	return conn, nil
}

type refresh struct {
	full    bool // no cookie: the refresh lists every entry
	present bool // present phase seen: unseen known entries are deleted
	seen    map[string]struct{}
	deletes map[string]struct{}
	cookie  []byte // the cookie the session started from
}

// dialSync opens the connection the sync search runs on.
func (l *Listener) dialSync(ctx context.Context) (*syncrepl.Conn, error) {
	conn, err := syncrepl.Dial(ctx, l.cfg.URL, l.cfg.TLS)
	if err != nil {
		return nil, err
	}
	if l.cfg.StartTLS {
		if err := conn.StartTLS(ctx, l.cfg.TLS); err != nil {
			conn.Close()
			return nil, fmt.Errorf("starttls to %s: %w", l.cfg.URL, err)
		}
	}
	if l.cfg.BindDN != "" {
		// the password never appears in the error
		if err := conn.Bind(ctx, l.cfg.BindDN, l.cfg.BindPassword); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return conn, nil
}

// session runs one syncrepl search until it fails or ctx ends.
func (l *Listener) session(ctx context.Context) error {
	cookie, err := l.cookie(ctx)
	if err != nil {
		return err
	}
	rf := &refresh{full: cookie == nil, seen: map[string]struct{}{}, deletes: map[string]struct{}{}, cookie: cookie}
	if err := l.cfg.Flavor.beforeSync(ctx, l.dial, l.cfg, rf); err != nil {
		return err
	}
	conn, err := l.dialSync(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := conn.Search(sctx, syncrepl.Request{BaseDN: l.cfg.BaseDN, Filter: event.Filter,
		Attributes: append(l.cfg.Flavor.attrs(), event.Followed...),
		Mode:       syncrepl.ModeRefreshAndPersist, Cookie: cookie})
	if err != nil {
		return fmt.Errorf("sync search on %s: %w", l.cfg.URL, err)
	}

	l.work.Lock()
	l.dropPending()
	l.pipe = l.startPipeline(sctx)
	l.work.Unlock()
	// Batches already handed over are stored before the session ends,
	// unless ctx ended or the pipeline failed.
	defer func() {
		l.work.Lock()
		defer l.work.Unlock()
		l.pipe.stop()
		l.pipe = nil
	}()
	refreshing := true
	l.setStatus(func(s *Status) { s.Connected, s.Refreshing = true, true })
	l.log.Info().Bool("full", rf.full).Msg("directory sync started")

	for {
		m, err := resp.Next()
		if err != nil {
			if ldap.IsErrorWithCode(err, ldap.LDAPResultSyncRefreshRequired) {
				// e-syncRefreshRequired: the server cannot resume from our
				// cookie. Drop it; the next session is a full refresh whose
				// unseen entries become deletes.
				l.log.Warn().Msg("directory asks for a full refresh (e-syncRefreshRequired)")
				if derr := l.bus.State.Delete(ctx, KeyCookie); derr != nil {
					return fmt.Errorf("drop sync cookie: %w", derr)
				}
				return fmt.Errorf("full refresh required: %w", err)
			}
			return fmt.Errorf("sync search on %s: %w", l.cfg.URL, err)
		}
		if err := l.handle(ctx, m, rf, &refreshing); err != nil {
			return err
		}
	}
}

// handle processes one syncrepl message: an entry with its sync state, or a
// sync info message.
func (l *Listener) handle(ctx context.Context, m *syncrepl.Message, rf *refresh, refreshingp *bool) error {
	l.work.Lock()
	defer l.work.Unlock()
	refreshing := *refreshingp
	defer func() { *refreshingp = refreshing }()
	var newCookie []byte
	switch {
	case m.Kind == syncrepl.KindEntry && m.HasState:
		uuid := m.UUID.String()
		switch m.State {
		case syncrepl.StatePresent:
			rf.seen[uuid] = struct{}{}
			rf.present = true
		case syncrepl.StateAdd, syncrepl.StateModify:
			rf.seen[uuid] = struct{}{}
			delete(rf.deletes, uuid)
			if err := l.queueEntry(ctx, uuid, m, rf); err != nil {
				return err
			}
		case syncrepl.StateDelete:
			if refreshing {
				rf.deletes[uuid] = struct{}{}
			} else if err := l.queueDelete(ctx, uuid); err != nil {
				return err
			}
		}
		newCookie = m.Cookie
	case m.Kind == syncrepl.KindInfo:
		newCookie = m.Cookie
		switch m.Info {
		case syncrepl.InfoRefreshDelete, syncrepl.InfoRefreshPresent:
			if m.Info == syncrepl.InfoRefreshPresent {
				rf.present = true
			}
			if refreshing && m.RefreshDone {
				if err := l.endRefresh(ctx, rf); err != nil {
					return err
				}
				refreshing = false
			}
		case syncrepl.InfoSyncIDSet:
			for _, u := range m.UUIDs {
				id := u.String()
				switch {
				case !m.RefreshDeletes:
					rf.seen[id] = struct{}{}
					rf.present = true
				case refreshing:
					rf.deletes[id] = struct{}{}
				default:
					if err := l.queueDelete(ctx, id); err != nil {
						return err
					}
				}
			}
		}
	}
	// In persist mode every change is published and stored at once:
	// the latency from the LDAP write to the event is one publish round
	// trip. A cookie is saved only once everything before it is stored.
	if !refreshing || len(newCookie) > 0 {
		if err := l.sync(ctx); err != nil {
			return err
		}
	} else if len(l.pending) >= l.cfg.BatchSize || l.pendingBytes >= l.cfg.BatchBytes {
		if err := l.flush(ctx); err != nil {
			return err
		}
	}
	if len(newCookie) > 0 {
		if err := l.saveCookie(ctx, newCookie); err != nil {
			return err
		}
	}
	return nil
}

func (l *Listener) queueEntry(ctx context.Context, uuid string, m *syncrepl.Message, rf *refresh) error {
	attrs := make(event.Attrs, len(m.Attributes))
	for _, a := range m.Attributes {
		addFollowed(attrs, a.Name, a.Values)
	}
	kind, ok := event.KindOf(attrs)
	if !ok {
		return l.queueDelete(ctx, uuid)
	}
	entry := event.Entry{UUID: uuid, DN: m.DN, Kind: kind, Attrs: attrs}
	entry.CSN = l.cfg.Flavor.csn(m.DN, m.Attr(l.cfg.Flavor.stampAttr()), attrs, m.Cookie, rf.cookie)
	old, had := l.known[uuid]
	ev := event.Event{V: event.Version, Op: event.OpAdd, Kind: kind, UUID: uuid, DN: m.DN,
		New: attrs, CSN: entry.CSN, At: time.Now().UTC()}
	if had {
		ev.Op = event.OpModify
	}
	if p := l.poisonValues(uuid, m.DN, attrs); p != nil {
		return l.skipPoison(ctx, p, ev)
	}
	now := compact(entry)
	if had && old.dn == now.dn && old.sum == now.sum && old.kind == now.kind {
		// Nothing mailsync follows changed (a poison entry set back to
		// what was last published is fixed so).
		return l.clearPoison(ctx, uuid)
	}
	if had {
		oldAttrs, err := l.oldState(ctx, uuid)
		if err != nil {
			return err
		}
		ev.Old = oldAttrs
		if old.dn != m.DN {
			ev.OldDN = old.dn
		}
	}
	if p := l.poisonSize(&ev); p != nil {
		return l.skipPoison(ctx, p, ev)
	}
	if err := l.clearPoison(ctx, uuid); err != nil {
		return err
	}
	// The message's strings share one allocation with all its values;
	// what stays in memory for good gets its own.
	if had && old.dn == now.dn {
		now.dn = old.dn
	} else {
		now.dn = strings.Clone(now.dn)
	}
	now.csn = strings.Clone(now.csn)
	l.known[uuid] = now
	l.stage(uuid, &entry)
	l.pending = append(l.pending, pendingPub{ev: ev, entry: &entry})
	l.pendingBytes += attrsSize(ev.Old) + 2*attrsSize(attrs)
	return nil
}

func (l *Listener) queueDelete(ctx context.Context, uuid string) error {
	if err := l.clearPoison(ctx, uuid); err != nil {
		return err
	}
	old, had := l.known[uuid]
	if !had {
		return nil
	}
	oldAttrs, err := l.oldState(ctx, uuid)
	if err != nil {
		return err
	}
	delete(l.known, uuid)
	l.stage(uuid, nil)
	l.pendingBytes += attrsSize(oldAttrs)
	l.pending = append(l.pending, pendingPub{ev: event.Event{V: event.Version, Op: event.OpDelete,
		Kind: old.kind, UUID: uuid, DN: old.dn, Old: oldAttrs, CSN: old.csn, At: time.Now().UTC()}})
	return nil
}

// endRefresh turns the known entries the refresh did not mention into
// deletes (full or present-mode refresh), applies the mass-delete guard,
// and queues what may be published.
func (l *Listener) endRefresh(ctx context.Context, rf *refresh) error {
	if rf.full || rf.present {
		for uuid := range l.known {
			if _, ok := rf.seen[uuid]; !ok {
				rf.deletes[uuid] = struct{}{}
			}
		}
		// A skipped entry that is gone was never published: nothing to
		// delete, only its record to drop.
		for uuid := range l.poison {
			if _, ok := rf.seen[uuid]; !ok {
				if _, known := l.known[uuid]; !known {
					if err := l.clearPoison(ctx, uuid); err != nil {
						return err
					}
				}
			}
		}
	}
	// The pending adds already sit in known; count the directory as it was.
	knownBefore := len(l.known)
	for _, p := range l.pending {
		if p.ev.Op == event.OpAdd {
			knownBefore--
		}
	}
	var dels []string
	for uuid := range rf.deletes {
		if _, ok := l.known[uuid]; ok {
			dels = append(dels, uuid)
		}
	}
	held, err := l.heldDeletes(ctx)
	if err != nil {
		return err
	}
	if held != nil {
		// Entries that came back are no longer held.
		var still []string
		for _, u := range held.UUIDs {
			if _, ok := rf.seen[u]; !ok {
				if _, known := l.known[u]; known {
					still = append(still, u)
				}
			}
		}
		held.UUIDs = still
	}
	if len(dels) > 0 && !l.cfg.ConfirmMassDelete &&
		float64(len(dels)) > l.cfg.MassDeleteShare*float64(knownBefore) && len(dels) > l.cfg.MassDeleteMin {
		l.log.Error().Int("deletes", len(dels)).Int("known", knownBefore).
			Float64("share", float64(len(dels))/float64(max(knownBefore, 1))).
			Msg("mass-delete guard: refresh would delete a large share of the directory; deletes held until confirmed (mailsync confirm-deletes)")
		if held == nil {
			held = &HeldDeletes{Known: knownBefore, At: time.Now().UTC()}
		}
		set := map[string]struct{}{}
		for _, u := range held.UUIDs {
			set[u] = struct{}{}
		}
		for _, u := range dels {
			if _, ok := set[u]; !ok {
				held.UUIDs = append(held.UUIDs, u)
			}
		}
		dels = nil
	}
	for _, u := range dels {
		if err := l.queueDelete(ctx, u); err != nil {
			return err
		}
	}
	if err := l.storeHeld(ctx, held); err != nil {
		return err
	}
	l.setStatus(func(s *Status) { s.Refreshing = false })
	l.log.Info().Int("entries", len(l.known)).Int("deletes", len(dels)).Msg("directory refresh done")
	return l.sync(ctx)
}

func (l *Listener) heldDeletes(ctx context.Context) (*HeldDeletes, error) {
	e, err := l.bus.State.Get(ctx, KeyHeldDeletes)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read held deletes: %w", err)
	}
	var h HeldDeletes
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return nil, fmt.Errorf("decode held deletes: %w", err)
	}
	if len(h.UUIDs) == 0 {
		return nil, nil
	}
	return &h, nil
}

func (l *Listener) storeHeld(ctx context.Context, h *HeldDeletes) error {
	n := 0
	if h != nil {
		n = len(h.UUIDs)
	}
	l.setStatus(func(s *Status) { s.HeldDeletes = n })
	return l.storeState(ctx, KeyHeldDeletes, "held deletes", h, n == 0)
}

// storeState writes v as JSON under key of the state bucket, or deletes the
// key when empty.
func (l *Listener) storeState(ctx context.Context, key, what string, v any, empty bool) error {
	if empty {
		if err := l.bus.State.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("clear %s: %w", what, err)
		}
		return nil
	}
	data, _ := json.Marshal(v)
	if _, err := l.bus.State.Put(ctx, key, data); err != nil {
		return fmt.Errorf("store %s: %w", what, err)
	}
	return nil
}

// ConfirmDeletes asks the running listener to publish the held deletes.
func ConfirmDeletes(ctx context.Context, bus *stream.Bus) error {
	if _, err := bus.State.Put(ctx, KeyConfirmDelete, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("confirm held deletes: %w", err)
	}
	return nil
}

// confirmCh carries an operator's confirmation into the session loop.
func (l *Listener) watchConfirm(ctx context.Context) {
	w, err := l.bus.State.Watch(ctx, KeyConfirmDelete, jetstream.UpdatesOnly())
	if err != nil {
		l.log.Error().Err(err).Msg("watch for delete confirmations")
		return
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-w.Updates():
			if u == nil || u.Operation() != jetstream.KeyValuePut {
				continue
			}
			l.confirm.Store(true)
			l.work.Lock()
			err := l.sync(ctx)
			l.work.Unlock()
			if err != nil {
				l.log.Error().Err(err).Msg("publish confirmed deletes")
			}
		}
	}
}

// releaseHeld publishes the deletes an operator confirmed.
func (l *Listener) releaseHeld(ctx context.Context) error {
	h, err := l.heldDeletes(ctx)
	if err != nil || h == nil {
		return err
	}
	l.log.Warn().Int("deletes", len(h.UUIDs)).Msg("held deletes confirmed; publishing")
	for _, u := range h.UUIDs {
		if err := l.queueDelete(ctx, u); err != nil {
			return err
		}
	}
	if err := l.storeHeld(ctx, nil); err != nil {
		return err
	}
	if err := l.bus.State.Delete(ctx, KeyConfirmDelete); err != nil {
		return fmt.Errorf("clear delete confirmation: %w", err)
	}
	return nil
}

func (l *Listener) cookie(ctx context.Context) ([]byte, error) {
	e, err := l.bus.State.Get(ctx, KeyCookie)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read sync cookie: %w", err)
	}
	return e.Value(), nil
}

func (l *Listener) saveCookie(ctx context.Context, c []byte) error {
	if _, err := l.bus.State.Put(ctx, KeyCookie, c); err != nil {
		return fmt.Errorf("store sync cookie: %w", err)
	}
	l.setStatus(func(s *Status) { s.CookieAt = time.Now() })
	return nil
}
