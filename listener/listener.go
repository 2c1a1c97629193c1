// Package listener turns an LDAP directory's changes into mailsync events on
// JetStream, using RFC 4533 content synchronisation (syncrepl,
// refreshAndPersist) against OpenLDAP's syncprov or 389-DS's Content
// Synchronization plugin (Flavor: one file each).
//
// Guarantees:
//   - Identity is the entryUUID (on 389-DS the nsUniqueId): a modrdn (a user
//     moved to another OU) is one modify event with old_dn, never a delete
//     and an add.
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
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-ldap/ldap/v3"
	"github.com/rs/zerolog"

	"mailsync/config"
	"mailsync/event"
	"mailsync/fault"
	"mailsync/ldapconn"
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
	// syncprov (OpenLDAP, the default) or 389-DS's Content Synchronization
	// plugin (DS389).
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
	// entry changed; its old state (DN, CSN, attributes) is read from KV
	// when an event needs it as `old`. staged holds the states queued and not yet in KV.
	known  map[string]knownEntry
	staged stagedStates
	// acks publishes events and states (set while the listener is active)
	acks *acker

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

	status statusBox
}

// statusBox is the listener's Status, read by `mailsync status` while the
// session updates it.
type statusBox struct {
	mu sync.Mutex
	s  Status
}

// ErrCrash is returned when a test hook aborted the listener.
var ErrCrash = errors.New("listener aborted by test hook")

// New returns a listener publishing to bus.
func New(cfg Config, bus *stream.Bus, log zerolog.Logger, hooks Hooks) *Listener {
	if cfg.MassDeleteShare == 0 {
		cfg.MassDeleteShare = config.DefaultMassDeleteShare
	}
	if cfg.MassDeleteMin == 0 {
		cfg.MassDeleteMin = config.DefaultMassDeleteMin
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
	if cfg.Flavor == nil {
		cfg.Flavor = OpenLDAP{}
	}
	return &Listener{cfg: cfg, bus: bus, log: log.With().Str("component", "listener").Logger(), hooks: hooks}
}

// Status returns a snapshot of the listener's state.
func (l *Listener) Status() Status {
	l.status.mu.Lock()
	defer l.status.mu.Unlock()
	return l.status.s
}

func (l *Listener) setStatus(f func(*Status)) {
	l.status.mu.Lock()
	f(&l.status.s)
	l.status.mu.Unlock()
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
		lvl := l.log.Warn()
		if fault.IsPermanent(err) {
			// Trying again sends the same (a refused bind, a certificate
			// that does not verify): it works once the directory or the
			// config is fixed, so the listener goes on trying.
			lvl = l.log.Error()
		}
		lvl.Err(err).Dur("retry_in", d).Str("url", l.cfg.URL).Msg("directory sync interrupted")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

// target is the directory as ldapconn dials it.
func (l *Listener) target() ldapconn.Target {
	return ldapconn.Target{URL: l.cfg.URL, StartTLS: l.cfg.StartTLS, TLS: l.cfg.TLS,
		BindDN: l.cfg.BindDN, BindPassword: l.cfg.BindPassword}
}

// dial opens a go-ldap connection, for searches besides the sync.
func (l *Listener) dial(ctx context.Context) (*ldap.Conn, error) {
	return ldapconn.Dial(ctx, l.target())
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
	conn, err := syncrepl.Dial(ctx, l.target())
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := conn.Search(sctx, syncrepl.Request{BaseDN: l.cfg.BaseDN, Filter: event.Filter,
		Attributes: append(l.cfg.Flavor.syncAttributes(), event.Followed...),
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
