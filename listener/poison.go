package listener

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mailsync/event"
	"mailsync/runner"
	"mailsync/stream"
)

// A poison entry is one whose event the stream cannot take: a value over
// the per-value cap, a value that is not UTF-8 (JSON would replace its
// bytes, so the event would not carry the directory's value), or an event
// over the stream's maximum message size (NATS's max_payload, 1 MB by
// default). Publishing it would fail the same way on every attempt, and
// since the cookie may not pass an unpublished change, one such entry used
// to stop every change behind it. Instead it is skipped:
//   - reported once: a log line naming the DN and the attribute, a record
//     under KeyPoison in the state bucket (`mailsync status` lists it), and
//     a dead letter on mailsyncdead.listener.<entryUUID> naming DN and
//     attribute;
//   - the entry's last published state stays in the entries bucket and in
//     memory, so the handlers keep what they had, and the cookie advances
//     past the change (the record and the dead letter are written before);
//   - once the entry is fixed in the directory, the change is compared with
//     the last published state as any other and published; the record and
//     the dead letter are removed.
// The record is written before the cookie that covers the skipped change,
// so a restart forgets no report.

// KeyPoison is the state bucket key holding the poison entries, by
// entryUUID.
const KeyPoison = "poison_entries"

// DefaultMaxValueBytes is Config.MaxValueBytes's default. No attribute
// mailsync follows comes near it: addresses are at most 254 octets (RFC
// 5321), DNs and host names a few hundred. A value over it is a problem of
// its entry (a pasted file, a runaway script), never worth a message.
const DefaultMaxValueBytes = 64 << 10

// DeadHandler names the listener in its dead letters.
const DeadHandler = "listener"

// Poison is the record of an entry skipped because its event cannot be
// published.
type Poison struct {
	UUID   string    `json:"uuid"`
	DN     string    `json:"dn"`
	Attr   string    `json:"attr"`
	Reason string    `json:"reason"`
	Bytes  int       `json:"bytes"` // the value's or the event's size
	At     time.Time `json:"at"`
}

// DeadSubject is where the listener's dead letter for an entry goes.
func DeadSubject(uuid string) string {
	return stream.DeadPrefix + "." + DeadHandler + "." + uuid
}

// poisonValues finds a value over the cap or not UTF-8; nil when none.
func (l *Listener) poisonValues(uuid, dn string, a event.Attrs) *Poison {
	for _, name := range event.Followed {
		for _, v := range a[name] {
			switch {
			case len(v) > l.cfg.MaxValueBytes:
				return &Poison{UUID: uuid, DN: dn, Attr: name, Bytes: len(v), Reason: fmt.Sprintf(
					"a value of %d bytes, over the per-value cap of %d (listener MaxValueBytes)", len(v), l.cfg.MaxValueBytes)}
			case !utf8.ValidString(v):
				return &Poison{UUID: uuid, DN: dn, Attr: name, Bytes: len(v),
					Reason: "a value that is not UTF-8 (an event cannot carry it unchanged)"}
			}
		}
	}
	return nil
}

// poisonSize finds an event too large for the stream; nil when it fits.
// Most events are far below the limit: each byte takes at most 6 in JSON
// (\u00XX), so only an event whose raw size could reach the limit is
// encoded to be measured.
func (l *Listener) poisonSize(ev *event.Event) *Poison {
	limit := l.maxEvent
	raw := attrsSize(ev.Old) + attrsSize(ev.New) + len(ev.DN) + len(ev.OldDN) + len(ev.UUID) + len(ev.CSN) + 128
	if limit <= 0 || 6*raw < limit {
		return nil
	}
	data, err := appendEvent(nil, ev, nil)
	if err != nil {
		return &Poison{UUID: ev.UUID, DN: ev.DN, Reason: fmt.Sprintf("the event cannot be encoded: %v", err)}
	}
	if len(data) <= limit {
		return nil
	}
	// Name the attribute that weighs most, encoded, in the new state.
	attr, most := "", -1
	for _, name := range event.Followed {
		if vals := ev.New[name]; len(vals) > 0 {
			if n := len(appendAttrs(nil, event.Attrs{name: vals})); n > most {
				attr, most = name, n
			}
		}
	}
	return &Poison{UUID: ev.UUID, DN: ev.DN, Attr: attr, Bytes: len(data), Reason: fmt.Sprintf(
		"an event of %d bytes (largest attribute %s, %d bytes), over the stream's maximum message size of %d",
		len(data), attr, most, limit)}
}

// maxEventSize is the largest event the stream takes: the server's
// max_payload, or the stream's max message size if smaller, less room for
// the Nats-Msg-Id header.
func maxEventSize(nc *nats.Conn, s jetstream.Stream) int {
	limit := nc.MaxPayload()
	if info := s.CachedInfo(); info != nil && info.Config.MaxMsgSize > 0 && int64(info.Config.MaxMsgSize) < limit {
		limit = int64(info.Config.MaxMsgSize)
	}
	return int(limit) - 512
}

// skipPoison reports a poison entry once and leaves it out. A change of the
// same problem (same attribute) is not reported again.
func (l *Listener) skipPoison(ctx context.Context, p *Poison, ev event.Event) error {
	if old, ok := l.poison[p.UUID]; ok && old.Attr == p.Attr && old.DN == p.DN {
		return nil
	}
	p.At = time.Now().UTC()
	l.log.Error().Str("dn", p.DN).Str("uuid", p.UUID).Str("attr", p.Attr).Int("bytes", p.Bytes).Str("reason", p.Reason).
		Msg("entry cannot be published; skipped until it is fixed in the directory (other entries go on)")
	rec := runner.DeadLetter{Handler: DeadHandler, DN: p.DN, UUID: p.UUID, Attrs: []string{p.Attr},
		Reason: fmt.Sprintf("entry %s: %s: %s; not published until fixed", p.DN, p.Attr, p.Reason), Attempts: 1, At: p.At,
		// The attributes are left out: they are what could not be published.
		Event: event.Event{V: ev.V, Op: ev.Op, Kind: ev.Kind, UUID: ev.UUID, DN: ev.DN, OldDN: ev.OldDN, CSN: ev.CSN, At: ev.At}}
	data, _ := json.Marshal(rec)
	m := &nats.Msg{Subject: DeadSubject(p.UUID), Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, "listener:"+p.UUID+":"+ev.CSN+":"+p.Attr)
	if _, err := l.bus.JS.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("record dead letter of %s: %w", p.DN, err)
	}
	next := make(map[string]Poison, len(l.poison)+1)
	for k, v := range l.poison {
		next[k] = v
	}
	next[p.UUID] = *p
	if err := l.storePoison(ctx, next); err != nil {
		return err
	}
	l.poison = next
	return nil
}

// clearPoison forgets that uuid was skipped: it was fixed or deleted.
func (l *Listener) clearPoison(ctx context.Context, uuid string) error {
	p, ok := l.poison[uuid]
	if !ok {
		return nil
	}
	next := make(map[string]Poison, len(l.poison))
	for k, v := range l.poison {
		if k != uuid {
			next[k] = v
		}
	}
	if err := l.storePoison(ctx, next); err != nil {
		return err
	}
	l.poison = next
	if err := l.bus.Dead.Purge(ctx, jetstream.WithPurgeSubject(DeadSubject(uuid))); err != nil {
		l.log.Warn().Err(err).Str("dn", p.DN).Msg("remove the dead letter of a fixed entry")
	}
	l.log.Info().Str("dn", p.DN).Str("uuid", uuid).Str("attr", p.Attr).Msg("entry fixed; published again")
	return nil
}

func (l *Listener) storePoison(ctx context.Context, ps map[string]Poison) error {
	l.setStatus(func(s *Status) { s.Poison = poisonList(ps) })
	return l.storeState(ctx, KeyPoison, "poison entries", ps, len(ps) == 0)
}

// LoadPoison reads the poison entries from the state bucket, sorted by DN.
func LoadPoison(ctx context.Context, bus *stream.Bus) ([]Poison, error) {
	m, err := loadPoison(ctx, bus)
	return poisonList(m), err
}

func loadPoison(ctx context.Context, bus *stream.Bus) (map[string]Poison, error) {
	e, err := bus.State.Get(ctx, KeyPoison)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return map[string]Poison{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read poison entries: %w", err)
	}
	m := map[string]Poison{}
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return nil, fmt.Errorf("decode poison entries: %w", err)
	}
	return m, nil
}

func poisonList(m map[string]Poison) []Poison {
	out := make([]Poison, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].DN < out[j].DN || out[i].DN == out[j].DN && out[i].UUID < out[j].UUID
	})
	return out
}
