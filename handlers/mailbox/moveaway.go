package mailbox

import (
	"context"

	"mailsync/event"
	"mailsync/fault"
	"mailsync/migrate"
)

// Mover copies a mailbox to the user's new home server, verifies the copy,
// then calls remove; migrate.Mover does it (wired by package registry).
type Mover interface {
	MoveAway(ctx context.Context, mv migrate.Move, remove func(context.Context) error) error
}

// moveAway hands a MovedAway decision to the Mover, with this handler's
// confined, crash-safe delete (under the delete policy) as the step that
// runs only after the copy was verified.
func (h *Handler) moveAway(ctx context.Context, ev event.Event, d Decision) error {
	home, _, err := h.locate(ev, d.Old)
	if err != nil {
		return err
	}
	if m, ok := readMarker(home); ok && m.UUID != ev.UUID {
		return fault.Permanentf("move mail of %s to %s: home %s belongs to entry %s (uuid %s); nothing moved",
			where(ev), d.To, home, m.DN, m.UUID)
	}
	mv := migrate.Move{UUID: ev.UUID, DN: ev.DN, Address: d.Old, User: d.New, Home: home, To: d.To}
	return h.cfg.Mover.MoveAway(ctx, mv, func(ctx context.Context) error { return h.delete(ctx, ev, d.Old) })
}
