package mailbox

// Create: the mailbox of an address made at once, its default folders
// with it, and its home marked as the entry's.

import (
	"context"
	"errors"
	"fmt"

	"mailsync/dovecotadm"
	"mailsync/event"
	"mailsync/fault"
)

// createKind makes the mailbox of addr with folders (nil: the default
// ones), or a public folder's maildir for a public key. Once it returns
// nil, the home index has the home by the marker written.
func (h *Handler) createKind(ctx context.Context, ev event.Event, addr string, folders []string) error {
	if publicName(addr) != "" {
		home, _, err := h.locate(ev, addr)
		if err != nil {
			return err
		}
		return h.createPublic(ev, addr, home)
	}
	if folders == nil {
		folders = h.folders
	}
	return h.createWith(ctx, ev, addr, folders)
}

// createWith makes the mailbox of addr with the folders given.
func (h *Handler) createWith(ctx context.Context, ev event.Event, addr string, folders []string) error {
	home, index, err := h.locate(ev, addr)
	if err != nil {
		return err
	}
	// Without a home there is no marker to read, and no mailboxes to list
	// before the create.
	had, _ := exists(home)
	var m marker
	marked := false
	if had {
		m, marked = readMarker(home)
	}
	if marked && m.UUID != ev.UUID {
		return fault.Permanentf("create mailbox %s for %s: home %s belongs to entry %s (uuid %s), "+
			"which had the address %q; not reused", addr, where(ev), home, m.DN, m.UUID, m.Address)
	}
	if marked && m.Address == addr {
		// The marker is written once the mailbox is made (a move's, once
		// its intent record is done: converge resumes that first). With
		// no applied record, the mailbox was made by a run whose records
		// are gone (a state dir started afresh): nothing to ask Dovecot,
		// and the marker follows a changed DN. An entry that had another
		// address since asks Dovecot as below (which also clears a
		// negative auth cache entry of the address).
		if _, known, err := h.applied.get(ev.UUID); err == nil && !known {
			return h.mark(ev, home, index, addr, m, marked)
		}
	}
	createMailbox := h.adm.CreateMailbox
	if !had {
		createMailbox = h.adm.CreateNewMailbox
	}
	err = createMailbox(ctx, addr, folders...)
	if errors.Is(err, dovecotadm.ErrUnknownUser) {
		// A negative auth cache entry from before the directory change:
		// the user's own entries go, not everyone's.
		if _, ferr := h.adm.FlushAuthCache(ctx, cacheNames(ev.DN, addr)...); ferr != nil {
			return ferr
		}
		err = createMailbox(ctx, addr, folders...)
	}
	if err != nil {
		return fmt.Errorf("create mailbox of %s: %w", where(ev), err)
	}
	return h.mark(ev, home, index, addr, m, marked)
}

// mark writes the owner marker of the home at addr, confined again right
// before, over the marker the caller read there before the create (old;
// ok false: none), and indexes the home by it: the marker is not read
// back.
func (h *Handler) mark(ev event.Event, home, index, addr string, old marker, ok bool) error {
	if err := h.confine(ev, home, index); err != nil {
		return err
	}
	m := marker{UUID: ev.UUID, DN: ev.DN, Address: addr}
	if err := writeMarkerOver(home, old, ok, m); err != nil {
		return fault.Retryable(fmt.Errorf("mark home %s of %s: %w", home, where(ev), err))
	}
	h.homes.set(home, m, true)
	return nil
}
