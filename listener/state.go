package listener

// What the listener keeps between sessions: the compact mirror of the entries
// bucket (known), the states staged for it, their recovery from the stream
// after a crash, and the sync cookie.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"mailsync/event"
	"mailsync/stream"
)

// stagedStates holds the entry states queued for publishing and not yet in
// the entries bucket (entry nil: deleted), each with the batch it is in.
// The session stages them, the pipeline's state writer unstages a batch's
// once the bucket has acked them, and an event's `old` is read here first.
type stagedStates struct {
	mu sync.Mutex
	m  map[string]staged
}

type staged struct {
	entry *event.Entry
	batch uint64
}

// get returns the state staged for uuid, if any.
func (s *stagedStates) get(uuid string) (staged, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.m[uuid]
	return st, ok
}

// put stages e (nil: deleted) for uuid in batch n.
func (s *stagedStates) put(uuid string, e *event.Entry, n uint64) {
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[string]staged)
	}
	s.m[uuid] = staged{entry: e, batch: n}
	s.mu.Unlock()
}

// stored unstages the states of batch n's publications; a state queued
// again in a later batch stays staged for that one.
func (s *stagedStates) stored(pubs []pendingPub, n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range pubs {
		u := pubs[i].ev.UUID
		if st, ok := s.m[u]; ok && st.batch <= n {
			delete(s.m, u)
		}
	}
}

// reset forgets every staged state.
func (s *stagedStates) reset() {
	s.mu.Lock()
	s.m = make(map[string]staged)
	s.mu.Unlock()
}

// knownEntry is what the listener keeps in memory of an entry it
// published: enough to tell a change from none (kind and digests of the DN
// and the attributes). What the event of a change needs of the old state
// (its DN, CSN and attributes) is read from the state staged or stored:
// at 100k entries a copy of every DN and CSN here was some 10 MB.
type knownEntry struct {
	kind  event.Kind
	dnSum uint64
	sum   uint64
}

func compact(e event.Entry) knownEntry {
	return knownEntry{kind: e.Kind, dnSum: fnvString(fnvOffset64, e.DN), sum: attrSum(e.Attrs)}
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

// oldState returns what the listener last published for uuid: the state
// staged for the bucket, or the one stored there.
func (l *Listener) oldState(ctx context.Context, uuid string) (*event.Entry, error) {
	s, ok := l.staged.get(uuid)
	if ok && s.entry != nil {
		return s.entry, nil
	}
	kv, err := l.bus.Entries.Get(ctx, uuid)
	if err != nil {
		return nil, fmt.Errorf("read stored state of %s: %w", uuid, err)
	}
	var e event.Entry
	if err := json.Unmarshal(kv.Value(), &e); err != nil {
		return nil, fmt.Errorf("decode stored state of %s: %w", uuid, err)
	}
	e.UUID = uuid
	return &e, nil
}

type pendingPub struct {
	ev    event.Event
	entry *event.Entry // nil for a delete
	state []byte       // entry encoded for KV, once the event is published
}

// stage records the state an event queued in the current batch publishes.
func (l *Listener) stage(uuid string, e *event.Entry) {
	l.staged.put(uuid, e, l.batches+1)
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
	l.staged.reset()
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
