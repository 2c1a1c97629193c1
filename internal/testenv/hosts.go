package testenv

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/listener"
	"mailsync/runner"
	"mailsync/stream"
)

// Hosts is mailsync across several mail hosts in the test process: one
// slapd, one JetStream, any number of listeners (one active, the others
// standing by on the lease) and one runner per mail host, each with its own
// NATS connection, as separate daemons on separate machines would have.
type Hosts struct {
	LDAP *Slapd
	NATS *NATS
	Bus  *stream.Bus

	t   testing.TB
	log zerolog.Logger

	mu        sync.Mutex
	listeners map[string]*hostProc
	runners   map[string]*hostProc
	handlers  map[string][]runner.Handler
}

type hostProc struct {
	L      *listener.Listener
	cancel context.CancelFunc
	done   chan error
}

// StartHosts starts the JetStream; listeners and runners are added with
// StartListener and StartRunner. Everything stops in t.Cleanup.
func StartHosts(t testing.TB, ldap *Slapd) *Hosts {
	t.Helper()
	n := StartNATS(t)
	h := &Hosts{LDAP: ldap, NATS: n, Bus: n.Bus(t), t: t,
		log:       zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		listeners: map[string]*hostProc{}, runners: map[string]*hostProc{}, handlers: map[string][]runner.Handler{}}
	t.Cleanup(h.Stop)
	return h
}

// StartListener starts a listener named id (its lease holder id) on its own
// NATS connection. It publishes once it holds the lease.
func (h *Hosts) StartListener(id string, hooks listener.Hooks) *listener.Listener {
	h.t.Helper()
	bus := h.NATS.Bus(h.t)
	l := listener.New(listener.Config{URL: h.LDAP.URL, BindDN: h.LDAP.AdminDN, BindPassword: h.LDAP.AdminPW,
		BaseDN: h.LDAP.BaseDN, MaxBackoff: time.Second, LeaseID: id},
		bus, h.log.With().Str("listener", id).Logger(), hooks)
	ctx, cancel := context.WithCancel(context.Background())
	p := &hostProc{L: l, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- l.Run(ctx) }()
	h.mu.Lock()
	h.listeners[id] = p
	h.mu.Unlock()
	// Before the NATS connection closes, so the lease can be released.
	h.t.Cleanup(func() { h.StopListener(id) })
	return l
}

// StopListener stops listener id and waits until it returned. Started with
// Hooks.KeepLeaseOnExit, this is a kill: its lease stays until it expires.
func (h *Hosts) StopListener(id string) {
	h.t.Helper()
	h.mu.Lock()
	p := h.listeners[id]
	delete(h.listeners, id)
	h.mu.Unlock()
	if p == nil {
		return
	}
	p.cancel()
	if err := <-p.done; err != nil {
		h.t.Errorf("listener %s: %v", id, err)
	}
}

// Active returns the ids of the listeners that hold the lease now.
func (h *Hosts) Active() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ids []string
	for id, p := range h.listeners {
		if p.L.Status().Active {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// StartRunner starts (or restarts) the worker of mail host host on its own
// NATS connection. The handlers are remembered for a restart with none.
func (h *Hosts) StartRunner(host string, handlers ...runner.Handler) {
	h.t.Helper()
	h.mu.Lock()
	if len(handlers) == 0 {
		handlers = h.handlers[host]
	}
	h.handlers[host] = handlers
	h.mu.Unlock()
	bus := h.NATS.Bus(h.t)
	r := runner.New(bus, runner.Config{Host: host, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second},
		h.log.With().Str("host", host).Logger(), handlers...)
	ctx, cancel := context.WithCancel(context.Background())
	p := &hostProc{cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- r.Run(ctx) }()
	h.mu.Lock()
	h.runners[host] = p
	h.mu.Unlock()
	h.t.Cleanup(func() { h.StopRunner(host) })
}

// StopRunner stops host's worker, letting running handler calls finish.
func (h *Hosts) StopRunner(host string) {
	h.t.Helper()
	h.mu.Lock()
	p := h.runners[host]
	delete(h.runners, host)
	h.mu.Unlock()
	if p == nil {
		return
	}
	p.cancel()
	if err := <-p.done; err != nil {
		h.t.Errorf("runner %s: %v", host, err)
	}
}

// Stop stops every listener, then every runner.
func (h *Hosts) Stop() {
	h.mu.Lock()
	var ls, rs []string
	for id := range h.listeners {
		ls = append(ls, id)
	}
	for host := range h.runners {
		rs = append(rs, host)
	}
	h.mu.Unlock()
	for _, id := range ls {
		h.StopListener(id)
	}
	for _, host := range rs {
		h.StopRunner(host)
	}
}

// Settled waits until the directory as it is now is published, then until
// every host's handlers have acked everything in the
// stream.
func (h *Hosts) Settled(t testing.TB) {
	t.Helper()
	Eventually(t, 60*time.Second, func() error { return published(t, h.LDAP, h.Bus) })
	Eventually(t, 60*time.Second, h.pending)
}

func (h *Hosts) pending() error {
	ctx := context.Background()
	info, err := h.Bus.Stream.Info(ctx)
	if err != nil {
		return err
	}
	h.mu.Lock()
	handlers := make(map[string][]runner.Handler, len(h.handlers))
	for host, hs := range h.handlers {
		handlers[host] = hs
	}
	h.mu.Unlock()
	for host, hs := range handlers {
		for _, hd := range hs {
			c, err := h.Bus.Stream.Consumer(ctx, runner.ConsumerName(hd.Name(), host))
			if err != nil {
				return fmt.Errorf("%s on %s: %w", hd.Name(), host, err)
			}
			ci, err := c.Info(ctx)
			if err != nil {
				return err
			}
			if ci.AckFloor.Stream < info.State.LastSeq || ci.NumAckPending > 0 {
				return fmt.Errorf("%s on %s acked %d of %d events (%d pending)", hd.Name(), host,
					ci.AckFloor.Stream, info.State.LastSeq, ci.NumAckPending)
			}
		}
	}
	return nil
}

// Apply runs change (a directory change), waits until the listener has
// published it, then until every host applied it. Settled alone may return
// before the listener saw the change.
func (h *Hosts) Apply(t testing.TB, change func()) {
	t.Helper()
	info, err := h.Bus.Stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	before := info.State.LastSeq
	change()
	Eventually(t, 30*time.Second, func() error {
		info, err := h.Bus.Stream.Info(context.Background())
		if err != nil {
			return err
		}
		if info.State.LastSeq <= before {
			return fmt.Errorf("change not published yet (stream at %d)", before)
		}
		return nil
	})
	h.Settled(t)
}
