package mailbox

// Delete: a home (and index) renamed into the trash atomically, so
// Dovecot never sees half a home, then removed.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"mailsync/atomicfile"
	"mailsync/event"
	"mailsync/fault"
)

// trashPath removes one directory: an atomic rename into the trash, so
// Dovecot never sees half a home, then the removal.
func (h *Handler) trashPath(in *intent, p *pathOp) error {
	h.fsMu.Lock()
	defer h.fsMu.Unlock()
	if err := h.layoutOf(p.From).Confine(p.From); err != nil {
		return fault.Permanentf("delete %s of entry %s: %w", p.What, in.DN, err)
	}
	fail := func(err error) error {
		return fault.Retryable(fmt.Errorf("delete %s %s of entry %s: %w", p.What, p.From, in.DN, err))
	}
	if ok, err := exists(p.From); err != nil {
		return fail(err)
	} else if ok {
		if err := os.MkdirAll(filepath.Dir(p.To), 0o700); err != nil {
			return fail(err)
		}
		err := renameNoReplace(p.From, p.To)
		if errors.Is(err, syscall.EXDEV) {
			err = os.RemoveAll(p.From) // the trash is on another filesystem
		}
		if err != nil {
			return fail(err)
		}
		if err := atomicfile.SyncDir(filepath.Dir(p.From)); err != nil {
			return fail(err)
		}
		if err := h.at("delete:" + p.What + "-trashed"); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(p.To); err != nil {
		return fail(err)
	}
	return nil
}

// delete applies the delete policy to addr's mailbox: kept (delete=no,
// see keep) or trashed (delete=yes).
func (h *Handler) delete(ctx context.Context, ev event.Event, addr string) error {
	if !h.cfg.Delete {
		return h.keep(ctx, ev, addr)
	}
	return h.trash(ctx, ev, addr)
}

// trash deletes addr's home (and index): an intent record, then the steps.
// A home another entry owns is left alone: the address is that entry's now.
func (h *Handler) trash(ctx context.Context, ev event.Event, addr string) error {
	home, index, err := h.locate(ev, addr)
	if err != nil {
		return err
	}
	if m, ok := readMarker(home); ok && m.UUID != ev.UUID {
		h.log.Info().Str("dn", ev.DN).Str("uuid", ev.UUID).Str("path", home).Str("owner_dn", m.DN).
			Msg("home of a given-up address belongs to another entry now; not deleted")
		return nil
	}
	stamp := fmt.Sprintf("%s-%d", ev.UUID, time.Now().UnixNano())
	root := h.layoutOf(home).Root
	in := &intent{V: 1, Op: "delete", UUID: ev.UUID, DN: ev.DN, Old: addr, At: time.Now().UTC(),
		Ops: []pathOp{{What: "home", Root: root, From: home, To: filepath.Join(root, trashDir, stamp)}}}
	if index != "" {
		in.Ops = append(in.Ops, pathOp{What: "index", Root: h.index.Root, From: index, To: filepath.Join(h.index.Root, trashDir, stamp)})
	}
	return h.begin(ctx, in)
}
