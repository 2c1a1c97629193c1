package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"mailsync/event"
)

// LatestUser is a handler that converges an entry to its newest state
// rather than applying the state an event carries (package mailbox); the
// runner gives it Latest before the first event.
type LatestUser interface {
	UseLatest(func(ctx context.Context, uuid string) (event.Entry, bool, error))
}

// Latest returns the newest state the listener published for an entry: the
// last event on its subjects (the entries bucket is written only after an
// event is acked, so it can lag the event being handled), or, when the
// stream no longer holds one (aged out) or the last is a dead letter sent
// again (which carries the state of its time), the entries bucket. ok is
// false when the entry is gone.
func (r *Runner) Latest(ctx context.Context, uuid string) (event.Entry, bool, error) {
	m, err := r.bus.Stream.GetLastMsgForSubject(ctx, event.SubjectPrefix+".*."+uuid)
	switch {
	case err == nil && m.Header.Get(HeaderOnly) == "":
		var ev event.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return event.Entry{}, false, fmt.Errorf("decode the last event of %s: %w", uuid, err)
		}
		if ev.Op == event.OpDelete {
			return event.Entry{}, false, nil
		}
		return event.Entry{UUID: uuid, DN: ev.DN, Kind: ev.Kind, Attrs: ev.New, CSN: ev.CSN}, true, nil
	case err != nil && !errors.Is(err, jetstream.ErrMsgNotFound):
		return event.Entry{}, false, fmt.Errorf("read the last event of %s: %w", uuid, err)
	}
	kv, err := r.bus.Entries.Get(ctx, uuid)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return event.Entry{}, false, nil
	}
	if err != nil {
		return event.Entry{}, false, fmt.Errorf("read the state of %s: %w", uuid, err)
	}
	var e event.Entry
	if err := json.Unmarshal(kv.Value(), &e); err != nil {
		return event.Entry{}, false, fmt.Errorf("decode the state of %s: %w", uuid, err)
	}
	e.UUID = uuid
	return e, true, nil
}
