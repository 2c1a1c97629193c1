package listener

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"mailsync/atomicfile"

	"github.com/nats-io/nats.go/jetstream"
)

// KeyLease is the state-bucket key of the listener lease: only its holder
// publishes, so several listeners may run against one JetStream (high
// availability) and exactly one follows the directory at a time.
const KeyLease = "listener_lease"

// Lease timing defaults: a holder renews every second and is presumed dead
// when its lease has not been renewed for three.
const (
	DefaultLeaseTTL   = 3 * time.Second
	DefaultLeaseRenew = time.Second
)

// leaseRecord is the value of the lease key. Expiry is judged by the key's
// revision not changing, measured on the standby's own clock, so clocks of
// different hosts never have to agree; the time is there for operators.
type leaseRecord struct {
	Holder  string    `json:"holder"`
	Renewed time.Time `json:"renewed"`
}

// errLeaseLost ends an active period whose lease was taken or could not be
// renewed in time.
var errLeaseLost = errors.New("listener lease lost")

// HolderID is the lease holder identity of the listener of the daemon on
// host that keeps its state in stateDir: the host and an id stored in
// stateDir (file listener-id, written on first use). It stays the same
// across restarts, so a daemon restarted after a crash takes over its own
// predecessor's lease at once instead of waiting for it to expire (a crash
// loop faster than the TTL would otherwise never run a listener); a
// standby on another host, with another state dir, still waits for expiry.
// Two processes must never share a state dir (the daemon holds a lock on
// it), or both would hold the one lease.
func HolderID(host, stateDir string) (string, error) {
	p := filepath.Join(stateDir, "listener-id")
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return "", fmt.Errorf("listener id: %w", err)
		}
		id := hex.EncodeToString(b)
		if err := atomicfile.Write(p, []byte(id+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("write listener id: %w", err)
		}
		data, err = []byte(id), nil
	}
	if err != nil {
		return "", fmt.Errorf("read listener id: %w", err)
	}
	id := strings.TrimSpace(string(data))
	if id == "" {
		return "", fmt.Errorf("read listener id: %s is empty", p)
	}
	return host + ":" + id, nil
}

// defaultLeaseID names a listener with no stable identity: a restart is a
// new holder and waits for the old lease to expire.
func defaultLeaseID() string {
	h, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", h, os.Getpid(), hex.EncodeToString(b))
}

func (l *Listener) leaseValue() []byte {
	v, _ := json.Marshal(leaseRecord{Holder: l.cfg.LeaseID, Renewed: time.Now().UTC()})
	return v
}

// acquireLease waits until this listener holds the lease and returns the
// revision it holds it at. A free (absent or released) lease is taken with
// Create; a held one is taken over with a compare-and-set Update once its
// revision has not moved for a whole TTL on this listener's clock. Only one
// contender's CAS succeeds.
func (l *Listener) acquireLease(ctx context.Context) (uint64, time.Time, error) {
	kv := l.bus.State
	var lastRev uint64
	var since time.Time
	logged := false
	poll := max(l.cfg.LeaseRenew/4, 10*time.Millisecond)
	for {
		e, err := kv.Get(ctx, KeyLease)
		sent := time.Now()
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rev, cerr := kv.Create(ctx, KeyLease, l.leaseValue())
			if cerr == nil {
				return rev, sent, nil
			}
			if !errors.Is(cerr, jetstream.ErrKeyExists) && ctx.Err() == nil {
				l.log.Warn().Err(cerr).Msg("take listener lease")
			}
		case err != nil:
			if ctx.Err() != nil {
				return 0, time.Time{}, ctx.Err()
			}
			l.log.Warn().Err(err).Msg("read listener lease")
		default:
			var rec leaseRecord
			_ = json.Unmarshal(e.Value(), &rec)
			stale := e.Revision() == lastRev && time.Since(since) > l.cfg.LeaseTTL
			if rec.Holder == l.cfg.LeaseID || stale {
				rev, uerr := kv.Update(ctx, KeyLease, l.leaseValue(), e.Revision())
				if uerr == nil {
					if stale {
						l.log.Warn().Str("previous", rec.Holder).Msg("listener lease expired; taking over")
					}
					return rev, sent, nil
				}
			}
			if e.Revision() != lastRev {
				lastRev, since = e.Revision(), time.Now()
			}
			if !logged {
				l.log.Info().Str("holder", rec.Holder).Msg("standby: another listener holds the lease")
				logged = true
			}
		}
		select {
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		case <-time.After(poll):
		}
	}
}

// keepLease renews the lease every LeaseRenew until ctx ends. When the lease
// is taken by another listener, or no renewal succeeded within the TTL less
// half a renewal (counted from when the last successful renewal was sent,
// so before any standby can have seen it expire), it calls lost at once and
// returns; a renewal that hangs does not delay this.
func (l *Listener) keepLease(ctx context.Context, rev uint64, acquired time.Time, lost func()) {
	kv := l.bus.State
	lastOK := acquired
	limit := l.cfg.LeaseTTL - l.cfg.LeaseRenew/2
	tick := time.NewTicker(l.cfg.LeaseRenew)
	defer tick.Stop()
	for {
		expiry := time.NewTimer(time.Until(lastOK.Add(limit)))
		select {
		case <-ctx.Done():
			expiry.Stop()
			return
		case <-expiry.C:
			l.log.Error().Msg("listener lease not renewed in time; stopping")
			lost()
			return
		case <-tick.C:
			expiry.Stop()
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, lastOK.Add(limit))
		r, err := kv.Update(rctx, KeyLease, l.leaseValue(), rev)
		cancel()
		if err == nil {
			rev, lastOK = r, sent
			l.leaseRev.Store(rev)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			// A renewal that timed out here may still have been stored:
			// the lease is then ours at a later revision.
			if e, gerr := kv.Get(ctx, KeyLease); gerr == nil {
				var rec leaseRecord
				if json.Unmarshal(e.Value(), &rec) == nil && rec.Holder == l.cfg.LeaseID {
					rev = e.Revision()
					l.leaseRev.Store(rev)
					continue
				}
			}
			l.log.Error().Msg("listener lease taken by another listener; stopping")
			lost()
			return
		}
		if time.Since(lastOK) >= limit {
			l.log.Error().Err(err).Msg("listener lease not renewed in time; stopping")
			lost()
			return
		}
		l.log.Warn().Err(err).Msg("renew listener lease")
	}
}

// releaseLease gives the lease up so a standby takes over at once. It only
// deletes the revision this listener holds.
func (l *Listener) releaseLease() {
	rev := l.leaseRev.Load()
	if rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.bus.State.Delete(ctx, KeyLease, jetstream.LastRevision(rev)); err != nil &&
		!errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
		l.log.Warn().Err(err).Msg("release listener lease")
	}
	l.leaseRev.Store(0)
}
