package mailbox

import (
	"context"

	"mailsync/event"
	"mailsync/fault"
)

// MailMove is a mailbox to move to the user's new home server.
type MailMove struct {
	UUID string
	DN   string
	// Address is the primary address the home on this host belongs to.
	Address string
	// User is the Dovecot username on both hosts during the move: the
	// entry's new primary address (the same as Address unless the address
	// changed with the home server).
	User string
	// Home is the mailbox's home directory on this host.
	Home string
	// To is the new home server's FQDN.
	To string
}

// Mover copies a mailbox to the user's new home server, verifies the copy,
// then calls remove; the cross-host Mover of package migrate does it
// (wired by package registry, so this handler imports no other).
type Mover interface {
	MoveAway(ctx context.Context, mv MailMove, remove func(context.Context) error) error
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
	mv := MailMove{UUID: ev.UUID, DN: ev.DN, Address: d.Old, User: d.New, Home: home, To: d.To}
	return h.cfg.Mover.MoveAway(ctx, mv, func(ctx context.Context) error { return h.delete(ctx, ev, d.Old) })
}
