package mailbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"mailsync/atomicfile"
	"mailsync/dovecotadm"
	"mailsync/event"
	"mailsync/fault"
	"mailsync/identity"
)

// LatestFunc returns an entry's newest published state; ok is false when
// the entry is gone. The runner hands one to the handler (UseLatest).
type LatestFunc = func(ctx context.Context, uuid string) (e event.Entry, ok bool, err error)

// UseLatest makes the handler converge to the newest state of an entry
// instead of the state an event carries. Without it (tests driving the
// handler with single events) the event's New is taken as the newest.
func (h *Handler) UseLatest(f LatestFunc) { h.latest = f }

// errSuperseded: Dovecot no longer knows the address a step needs because
// the entry changed again; its newer event converges it.
var errSuperseded = errors.New("superseded by a newer change of the entry")

// Handle converges the event's entry on this host. Users and shared
// folders are handled.
func (h *Handler) Handle(ctx context.Context, ev event.Event) error {
	if ok, err := handles(ev); !ok {
		return err
	}
	return h.converge(ctx, ev.UUID, &ev, false)
}

// handles tells whether the handler acts on the event (users and shared
// folders); an entryUUID that cannot name a record is a permanent error.
func handles(ev event.Event) (bool, error) {
	if ev.Kind != event.KindUser && ev.Kind != event.KindFolder {
		return false, nil
	}
	if !validUUID(ev.UUID) {
		return false, fault.Permanentf("mailbox of %s: entryUUID %q cannot name an intent record", where(ev), ev.UUID)
	}
	return true, nil
}

// entryLock serialises the convergence of one entry: its own lane and
// another entry's lane that converges it first (to free an address). It
// is kept while someone holds or waits for it, then dropped: a handler
// that has converged 100k entries keeps no lock of each.
type entryLock struct {
	mu   sync.Mutex
	refs int // holders and waiters; guarded by Handler.locksMu
}

// lockEntry takes uuid's lock; with try, only if nobody holds it (ok).
// unlock gives it back.
func (h *Handler) lockEntry(uuid string, try bool) (unlock func(), ok bool) {
	h.locksMu.Lock()
	l := h.locks[uuid]
	if l == nil {
		l = &entryLock{}
		h.locks[uuid] = l
	}
	l.refs++
	h.locksMu.Unlock()
	drop := func() {
		h.locksMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(h.locks, uuid)
		}
		h.locksMu.Unlock()
	}
	if try {
		if !l.mu.TryLock() {
			drop()
			return nil, false
		}
	} else {
		l.mu.Lock()
	}
	return func() { l.mu.Unlock(); drop() }, true
}

// current is the entry's newest state: from the stream when the handler
// has a LatestFunc, else from the trigger.
func (h *Handler) current(ctx context.Context, uuid string, trigger *event.Event) (*State, error) {
	if h.latest == nil {
		if trigger == nil || trigger.Op == event.OpDelete {
			return nil, nil
		}
		st, ok := StateOf(event.Entry{UUID: uuid, DN: trigger.DN, Kind: trigger.Kind, Attrs: trigger.New, CSN: trigger.CSN})
		if !ok {
			return nil, nil
		}
		return &st, nil
	}
	e, ok, err := h.latest(ctx, uuid)
	if err != nil {
		return nil, fault.Retryable(fmt.Errorf("read the newest state of entry %s: %w", uuid, err))
	}
	if !ok {
		return nil, nil
	}
	st, ok := StateOf(e)
	if !ok {
		return nil, nil
	}
	return &st, nil
}

// lastApplied is the state last applied on this host. Without a record
// (homes made before the record existed) it is the trigger's old state.
func (h *Handler) lastApplied(uuid string, trigger *event.Event) (*State, error) {
	st, known, err := h.applied.get(uuid)
	if err != nil || known {
		return st, err
	}
	if trigger == nil || trigger.Op == event.OpAdd || len(trigger.Old) == 0 {
		return nil, nil
	}
	dn := trigger.OldDN
	if dn == "" {
		dn = trigger.DN
	}
	old, ok := StateOf(event.Entry{UUID: uuid, DN: dn, Kind: trigger.Kind, Attrs: trigger.Old})
	if !ok || old.Refused != nil {
		// A refused state was never applied.
		return nil, nil
	}
	return &old, nil
}

// Settings are the handler's plan settings.
func (h *Handler) Settings() Settings {
	return Settings{Host: h.cfg.Host, Rename: h.cfg.Rename, Delete: h.cfg.Delete,
		MoveOnHomeChange: h.cfg.MoveOnHomeChange, Layout: h.home, Public: h.pub}
}

// input gathers what Plan decides from.
func (h *Handler) input(ctx context.Context, uuid string, cur, applied *State) (Input, error) {
	return gather(h.home, h.pub, h.cfg.Host, h.homes.of(uuid), uuid, cur, applied, func(other string) (*State, bool, error) {
		st, err := h.current(ctx, other, nil)
		if err != nil {
			return nil, false, err
		}
		otherApplied, _, err := h.applied.get(other)
		if err != nil {
			return nil, false, err
		}
		if h.latest == nil {
			// Without the stream the record is all there is to know.
			return otherApplied, true, nil
		}
		return st, same(otherApplied, st), nil
	})
}

// OtherFunc tells the current state of another entry (nil: gone) and
// whether its last applied state is that one.
type OtherFunc func(uuid string) (current *State, settled bool, err error)

// gather is Plan's input for uuid: its homes, and what is at its current
// address's home, with its owner's standing when that is another entry.
func gather(l, pub Layout, host string, homes []Home, uuid string, cur, applied *State, other OtherFunc) (Input, error) {
	in := Input{UUID: uuid, Current: cur, Applied: applied, Homes: homes}
	if cur == nil || cur.Address == "" || !identity.Responsible(cur.HomeServer, host) {
		return in, nil
	}
	p, err := keyPath(l, pub, cur.Address)
	if err != nil {
		return in, nil // Plan refuses it
	}
	ok, err := exists(p)
	if err != nil {
		return in, fault.Retryable(fmt.Errorf("inspect home %s: %w", p, err))
	}
	if !ok {
		return in, nil
	}
	t := &Home{Path: p, Address: cur.Address}
	if m, ok := readMarker(p); ok {
		t.Owner = Owner(m)
		if m.UUID != uuid {
			st, settled, err := other(m.UUID)
			if err != nil {
				return in, err
			}
			t.OwnerHolds = st != nil && st.Address == cur.Address && identity.Responsible(st.HomeServer, host)
			t.OwnerSettled = settled
		}
	}
	in.Target = t
	return in, nil
}

// Spool is a read-only view of a host's homes by owner, for `mailsync plan`
// and `check`: the index the handler keeps, read once.
type Spool struct {
	layout   Layout
	pub      Layout
	idx      *homeIndex
	unmarked []string
}

// ReadSpool indexes the homes of the layout's spool, and those of the
// public folders under the public layout if one is given.
func ReadSpool(l Layout, public ...Layout) (*Spool, error) {
	s := &Spool{layout: l, idx: newHomeIndex()}
	paths, err := ListHomes(l)
	if err != nil {
		return nil, err
	}
	if len(public) > 0 && public[0].Root != "" {
		s.pub = public[0]
		more, err := ListHomes(s.pub)
		if err != nil {
			return nil, err
		}
		paths = append(paths, more...)
	}
	for _, p := range paths {
		s.idx.update(p)
		if _, ok := s.idx.byPath[p]; !ok {
			s.unmarked = append(s.unmarked, p)
		}
	}
	return s, nil
}

// Owners lists the entryUUIDs that own homes, sorted.
func (s *Spool) Owners() []string {
	out := make([]string, 0, len(s.idx.byUUID))
	for u := range s.idx.byUUID {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

// Unmarked lists the homes without an owner marker, sorted.
func (s *Spool) Unmarked() []string { return s.unmarked }

// Input is Plan's input for uuid, as the handler gathers it.
func (s *Spool) Input(host, uuid string, cur, applied *State, other OtherFunc) (Input, error) {
	return gather(s.layout, s.pub, host, s.idx.of(uuid), uuid, cur, applied, other)
}

// converge brings the host to the entry's newest state. nested is set when
// another entry's convergence asks for this one first (to free an address
// that entry needs); it does not wait for a busy entry and asks no further.
func (h *Handler) converge(ctx context.Context, uuid string, trigger *event.Event, nested bool) error {
	if trigger == nil && h.latest == nil {
		return fault.Retryable(fmt.Errorf("entry %s: its newest state is unknown without the stream", uuid))
	}
	unlock, ok := h.lockEntry(uuid, nested)
	if !ok {
		return fault.Retryable(fmt.Errorf("entry %s is being converged", uuid))
	}
	defer unlock()
	if err := h.resume(ctx, uuid); err != nil && !errors.Is(err, dovecotadm.ErrUnknownUser) {
		return err
	}
	// Dovecot not knowing an address the interrupted operation needed
	// (its record is dropped) means the entry changed since, or the
	// directory Dovecot reads is not there yet: the plan below starts from
	// the homes as the operation left them, and its steps tell the two
	// apart (unknownUser).
	var stuck map[string]bool // entries whose own convergence is refused
	for round := 0; ; round++ {
		cur, err := h.current(ctx, uuid, trigger)
		if err != nil {
			return err
		}
		applied, err := h.lastApplied(uuid, trigger)
		if err != nil {
			return err
		}
		in, err := h.input(ctx, uuid, cur, applied)
		if err != nil {
			return err
		}
		if in.Target != nil && stuck[in.Target.Owner.UUID] {
			in.Target.OwnerSettled = true
		}
		p := PlanFor(in, h.Settings())
		switch {
		case p.Refused != nil:
			return fault.Permanent(p.Refused)
		case p.Wait != "" && !nested && round == 0 && in.Target != nil:
			// The entry that leaves the address goes first.
			other := in.Target.Owner.UUID
			err := h.converge(ctx, other, nil, true)
			switch {
			case fault.IsPermanent(err):
				// That entry cannot converge (its own dead letter says
				// why); it has let go of this address all the same.
				stuck = map[string]bool{other: true}
			case err != nil:
				return fault.Retryable(fmt.Errorf("mailbox of entry %s (uuid %s): %s: %v", dnOf(cur, applied), uuid, p.Wait, err))
			}
			continue
		case p.Wait != "":
			return fault.Retryable(fmt.Errorf("mailbox of entry %s (uuid %s): %s", dnOf(cur, applied), uuid, p.Wait))
		}
		ev := Transition(uuid, applied, cur)
		if cur == nil && trigger != nil {
			ev.CSN = trigger.CSN
		}
		err = h.execute(ctx, ev, p)
		if errors.Is(err, errSuperseded) {
			h.log.Debug().Str("uuid", uuid).Str("dn", ev.DN).Msg("superseded by a newer change; its event converges the entry")
			return nil
		}
		if err != nil {
			return err
		}
		h.unknown.Delete(uuid)
		if len(p.Steps) == 0 && applied != nil && cur != nil && same(applied, cur) && applied.DN == cur.DN {
			return nil // nothing new to record
		}
		if len(p.Steps) == 0 && applied == nil && cur == nil {
			if _, known, _ := h.applied.get(uuid); known {
				return nil
			}
		}
		return h.applied.put(uuid, cur)
	}
}

func dnOf(cur, applied *State) string {
	if cur != nil {
		return cur.DN
	}
	if applied != nil {
		return applied.DN
	}
	return ""
}

// execute runs a plan's steps in order; each is idempotent, so a crash
// at any point leaves work the next convergence (or Load) completes.
func (h *Handler) execute(ctx context.Context, ev event.Event, p Plan) error {
	var folders []string // the default ones
	if p.Folder {
		folders = []string{"INBOX"}
	}
	for _, s := range p.Steps {
		var err error
		switch s.Kind {
		case StepAttic:
			err = h.toAttic(ctx, ev, s)
		case StepCreate:
			err = h.createKind(ctx, ev, s.Address, folders)
		case StepACL:
			err = h.setACL(ctx, ev, s)
		case StepPublish:
			err = h.publish(ctx, ev, s.Address)
		case StepMove:
			err = h.move(ctx, ev, s.From, s.Address, folders)
		case StepTrash:
			err = h.trash(ctx, ev, s.Address)
		case StepKeep:
			err = h.keep(ctx, ev, s.Address)
		case StepMoveAway:
			err = h.moveAway(ctx, ev, p.Decision)
		}
		if errors.Is(err, dovecotadm.ErrUnknownUser) {
			err = h.unknownUser(ctx, ev, err)
		}
		if s.Path != "" && (s.Kind != StepCreate || err != nil) {
			// A create that succeeded indexed the marker it wrote.
			h.homes.update(s.Path)
		}
		if s.Kind == StepMove {
			if from, _, perr := h.paths(ev, s.From); perr == nil {
				h.homes.update(from)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unknownUser classifies Dovecot's "user unknown": superseded when the
// entry's newest state has changed since the plan (its newer event
// converges it), else left to a few retries, since the directory Dovecot
// reads may be ahead of the stream for a moment.
func (h *Handler) unknownUser(ctx context.Context, ev event.Event, cause error) error {
	cur, err := h.current(ctx, ev.UUID, nil)
	if err != nil || h.latest == nil {
		return cause
	}
	// The plan's event carries the address and home server only (a
	// folder's ACL is not in it): those say whether the entry moved on.
	planned, _ := StateOf(event.Entry{UUID: ev.UUID, DN: ev.DN, Kind: event.KindUser, Attrs: ev.New})
	if len(ev.New) == 0 || cur == nil || cur.Address != planned.Address || cur.HomeServer != planned.HomeServer {
		return errSuperseded
	}
	// The directory Dovecot reads is ahead of the stream (the listener
	// lags, or was down): the newer event is coming, and each retry reads
	// the newest state again. Retried as long as that is plausible, then
	// left to the runner's bounded retries and a dead letter.
	addr := planned.Address
	v, _ := h.unknown.LoadOrStore(ev.UUID, unknownSince{addr: addr, since: time.Now()})
	u := v.(unknownSince)
	if u.addr != addr {
		u = unknownSince{addr: addr, since: time.Now()}
		h.unknown.Store(ev.UUID, u)
	}
	err = fmt.Errorf("mailbox of %s: Dovecot does not know the address %s (for %s): %v",
		where(ev), addr, time.Since(u.since).Round(time.Second), cause)
	if time.Since(u.since) < UnknownPatience {
		return fault.Retryable(err)
	}
	return err
}

// UnknownPatience is how long Dovecot may not know an entry's current
// address before the error counts against the runner's bounded retries.
var UnknownPatience = 10 * time.Minute

// unknownSince is when Dovecot first did not know an entry's address.
type unknownSince struct {
	addr  string
	since time.Time
}

// keep applies delete=no to an address the entry gave up: its sessions are
// ended and the auth cache flushed, so it stops working here at once; the
// home stays.
func (h *Handler) keep(ctx context.Context, ev event.Event, addr string) error {
	if _, _, err := h.paths(ev, addr); err != nil {
		return err
	}
	if n := publicName(addr); n != "" {
		// No user to log out: its namespace went (StepPublish before).
		h.log.Info().Str("dn", ev.DN).Str("uuid", ev.UUID).Str("folder", n).
			Msg("public folder kept on disk (mail/dovecot/mailbox/delete is off)")
		return nil
	}
	if err := h.adm.Kick(ctx, addr); err != nil {
		return fmt.Errorf("give up address %s of %s: %w", addr, where(ev), err)
	}
	if _, err := h.adm.FlushAuthCache(ctx, cacheNames(ev.DN, addr)...); err != nil {
		return fmt.Errorf("give up address %s of %s: %w", addr, where(ev), err)
	}
	h.log.Info().Str("dn", ev.DN).Str("uuid", ev.UUID).Str("address", addr).
		Msg("mailbox kept on disk (mail/dovecot/mailbox/delete is off)")
	return nil
}

// AtticDir is the directory, inside the spool root, where homes that
// another entry left at a reused address are kept: a dot directory, which
// no valid address maps to, so no login reaches it.
const AtticDir = ".attic"

// toAttic moves the home another entry left at s.Path into
// <spool>/.attic/<its uuid>/<time>, before the entry that now has the
// address gets its mailbox there: a new user never reads an old user's
// mail. One rename(2): after a crash the home is in one place or the other.
func (h *Handler) toAttic(ctx context.Context, ev event.Event, s Step) error {
	home, index, err := h.locate(ev, s.Address)
	if err != nil {
		return err
	}
	// A session at the address may show the old mail: end it first.
	if publicName(s.Address) == "" {
		if err := h.adm.Kick(ctx, s.Address); err != nil {
			return fmt.Errorf("move the home at %s aside for %s: %w", s.Address, where(ev), err)
		}
	}
	h.fsMu.Lock()
	defer h.fsMu.Unlock()
	m, ok := readMarker(home)
	if !ok || m.UUID != s.Home.Owner.UUID {
		return nil // gone already, or no longer that entry's: the plan runs again
	}
	dst := filepath.Join(h.layoutOf(home).Root, AtticDir, m.UUID, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fault.Retryable(fmt.Errorf("attic for %s: %w", home, err))
	}
	if err := renameNoReplace(home, dst); err != nil {
		return fault.Retryable(fmt.Errorf("move %s into the attic: %w", home, err))
	}
	if err := errors.Join(atomicfile.SyncDir(filepath.Dir(dst)), atomicfile.SyncDir(filepath.Dir(home))); err != nil {
		return fault.Retryable(err)
	}
	if index != "" {
		// The separate index is a cache of the mail that left: dropped.
		if err := h.index.Confine(index); err == nil {
			_ = os.RemoveAll(index)
		}
	}
	h.log.Warn().Str("dn", ev.DN).Str("uuid", ev.UUID).Str("path", home).Str("attic", dst).
		Str("owner_dn", m.DN).Str("owner_uuid", m.UUID).
		Msg("the address was reused: the home its previous owner left (kept by policy) went to the attic; `mailsync attic restore` brings it back")
	return nil
}
