package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/listener"
	"mailsync/runner"
	"mailsync/stream"
)

// Pipeline is the whole of mailsync in the test process: a listener
// following a directory into an embedded JetStream, and a runner feeding the
// given handlers, as `mailsync run` wires them.
type Pipeline struct {
	// Dir is the directory followed, with the listener's Flavor for it.
	Dir    LDAPServer
	Flavor listener.Flavor
	NATS   *NATS
	Bus    *stream.Bus
	Host   string

	t        testing.TB
	log      zerolog.Logger
	handlers []runner.Handler
	Listener *listener.Listener

	stopListener, stopRunner context.CancelFunc
	listenerDone, runnerDone chan error
}

// StartPipeline starts a listener and a runner for host over ldap.
func StartPipeline(t testing.TB, ldap *Slapd, host string, handlers ...runner.Handler) *Pipeline {
	t.Helper()
	return StartPipelineOn(t, ldap, listener.OpenLDAP{}, host, handlers...)
}

// StartPipelineOn starts a listener of flavor over dir (slapd or 389-DS)
// and a runner for host.
func StartPipelineOn(t testing.TB, dir LDAPServer, flavor listener.Flavor, host string, handlers ...runner.Handler) *Pipeline {
	t.Helper()
	n := StartNATS(t)
	p := &Pipeline{Dir: dir, Flavor: flavor, NATS: n, Bus: n.Bus(t), Host: host, t: t, handlers: handlers,
		log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}
	p.StartListener()
	p.StartRunner()
	t.Cleanup(p.Stop)
	return p
}

// StartListener starts the listener (again).
func (p *Pipeline) StartListener() {
	ctx, cancel := context.WithCancel(context.Background())
	ep := p.Dir.Endpoint()
	p.Listener = listener.New(listener.Config{URL: ep.URL, BindDN: ep.AdminDN, BindPassword: ep.AdminPW,
		BaseDN: ep.BaseDN, MaxBackoff: time.Second, Flavor: p.Flavor}, p.Bus, p.log, listener.Hooks{})
	done := make(chan error, 1)
	l := p.Listener
	go func() { done <- l.Run(ctx) }()
	p.stopListener, p.listenerDone = cancel, done
}

// StartRunner starts the runner (again) with the pipeline's handlers.
func (p *Pipeline) StartRunner() {
	ctx, cancel := context.WithCancel(context.Background())
	r := runner.New(p.Bus, runner.Config{Host: p.Host, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second}, p.log, p.handlers...)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	p.stopRunner, p.runnerDone = cancel, done
}

// StopRunner stops the runner, letting running handler calls finish.
func (p *Pipeline) StopRunner() {
	if p.stopRunner == nil {
		return
	}
	p.stopRunner()
	if err := <-p.runnerDone; err != nil {
		p.t.Errorf("runner: %v", err)
	}
	p.stopRunner = nil
}

// StopListener stops the listener.
func (p *Pipeline) StopListener() {
	if p.stopListener == nil {
		return
	}
	p.stopListener()
	if err := <-p.listenerDone; err != nil {
		p.t.Errorf("listener: %v", err)
	}
	p.stopListener = nil
}

// Stop stops listener and runner.
func (p *Pipeline) Stop() {
	p.StopListener()
	p.StopRunner()
}

// Settled waits until the listener has published the directory as it is
// now, then until every handler's consumer has acked everything in the
// stream. (Waiting on the consumers alone could return between an LDAP
// write and its event.)
func (p *Pipeline) Settled(t testing.TB) {
	t.Helper()
	Eventually(t, 30*time.Second, func() error { return published(t, p.Dir, p.Bus) })
	Eventually(t, 30*time.Second, func() error {
		return p.pending()
	})
}

// published reports whether the entries bucket holds every entry of the
// directory as it is now, and nothing else: the listener has published
// every change made so far.
func published(t testing.TB, ldap LDAPServer, bus *stream.Bus) error {
	dir := ldap.Entries(t)
	kv, err := stream.LoadEntries(context.Background(), bus.Entries)
	if err != nil {
		return err
	}
	if len(kv) != len(dir) {
		return fmt.Errorf("listener has published %d entries, the directory holds %d", len(kv), len(dir))
	}
	for _, e := range dir {
		k, ok := kv[e.UUID]
		if !ok || k.DN != e.DN || !k.Attrs.Equal(e.Attrs) {
			return fmt.Errorf("listener has not published the current state of %s yet", e.DN)
		}
	}
	return nil
}

func (p *Pipeline) pending() error {
	ctx := context.Background()
	info, err := p.Bus.Stream.Info(ctx)
	if err != nil {
		return err
	}
	for _, h := range p.handlers {
		c, err := p.Bus.Stream.Consumer(ctx, runner.ConsumerName(h.Name(), p.Host))
		if err != nil {
			return err
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if ci.AckFloor.Stream < info.State.LastSeq || ci.NumAckPending > 0 {
			return fmt.Errorf("handler %s acked %d of %d events (%d pending)", h.Name(), ci.AckFloor.Stream, info.State.LastSeq, ci.NumAckPending)
		}
	}
	return nil
}
