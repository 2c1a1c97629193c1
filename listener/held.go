package listener

// The mass-delete guard: a refresh that would delete a large share of the
// directory is held in the state bucket until an operator confirms it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"mailsync/stream"
)

// HeldDeletes is the record of a refresh held by the mass-delete guard.
type HeldDeletes struct {
	UUIDs []string  `json:"uuids"`
	Known int       `json:"known"`
	At    time.Time `json:"at"`
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
