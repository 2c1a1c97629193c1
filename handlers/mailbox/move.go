package mailbox

// Move: a home (and index) renamed to the entry's new address, rename(2)
// within one filesystem or copy, verify, swap across filesystems; a target
// that exists is refused, nothing merged.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"mailsync/atomicfile"
	"mailsync/event"
	"mailsync/fault"
)

// syncDirs makes the renames in dirs durable; renames of other entries in
// the same directory at the same time share the fsync (atomicfile.Dir).
func (h *Handler) syncDirs(dirs ...string) error {
	var errs []error
	for i, d := range dirs {
		if slices.Contains(dirs[:i], d) {
			continue
		}
		v, _ := h.dirs.LoadOrStore(d, atomicfile.NewDir(d))
		errs = append(errs, v.(*atomicfile.Dir).Sync())
	}
	return errors.Join(errs...)
}

// movePath brings one directory from From to To, judging by what is on
// disk, so a repeated call after a crash at any point finishes the job.
func (h *Handler) movePath(in *intent, p *pathOp) error {
	h.fsMu.Lock()
	locked := true
	unlock := func() {
		if locked {
			locked = false
			h.fsMu.Unlock()
		}
	}
	defer unlock()
	l := h.layoutOf(p.To)
	for _, q := range []string{p.From, p.To} {
		if err := h.layoutOf(q).Confine(q); err != nil {
			return fault.Permanentf("move %s of entry %s: %w", p.What, in.DN, err)
		}
	}
	fromOK, err1 := exists(p.From)
	toOK, err2 := exists(p.To)
	if err := errors.Join(err1, err2); err != nil {
		return fault.Retryable(fmt.Errorf("move %s of entry %s: %w", p.What, in.DN, err))
	}
	fail := func(err error) error {
		return fault.Retryable(fmt.Errorf("move %s %s -> %s of entry %s: %w", p.What, p.From, p.To, in.DN, err))
	}
	if !fromOK {
		// Done, or nothing was there to move (§1.9 item 4).
		if p.Tmp != "" {
			if err := os.RemoveAll(p.Tmp); err != nil {
				return fail(err)
			}
		}
		return nil
	}
	if toOK {
		switch {
		case p.Verified:
			// The verified copy was swapped in; finish deleting the original.
			if err := os.RemoveAll(p.From); err != nil {
				return fail(err)
			}
			return atomicfile.SyncDir(filepath.Dir(p.From))
		case p.What == "index":
			// A stale index of an earlier owner of the address: indexes
			// are caches Dovecot rebuilds; the moving one is the truth.
			h.log.Warn().Str("dn", in.DN).Str("path", p.To).Msg("removing a stale index dir in the way of a move")
			if err := os.RemoveAll(p.To); err != nil {
				return fail(err)
			}
		case p.What == "home" && h.bornDuring(in, p.To):
			// Dovecot made it during this rename (a login or delivery at
			// the new address): set it aside, give its messages to the
			// moving home, and rename at once (absorb.go).
			if err := h.setAsideLocked(in.UUID, p.To); err != nil {
				return fail(err)
			}
			if err := h.drainRaceHomesLocked(in.UUID, in.DN, p.From); err != nil {
				return err
			}
		default:
			return h.conflict(in, p)
		}
	}
	uid, gid := h.owner()
	if err := mkdirOwned(l.Root, filepath.Dir(p.To), uid, gid); err != nil {
		return fail(err)
	}
	if p.Verified {
		if ok, _ := exists(p.Tmp); ok {
			return h.swapCopy(in, p, fail)
		}
		p.Verified = false
	}
	err := h.rename(p.From, p.To)
	switch {
	case err == nil:
		// The rename is made; making it durable needs no other entry to
		// wait (the next step of this one waits for it).
		unlock()
		if err := h.syncDirs(filepath.Dir(p.To), filepath.Dir(p.From)); err != nil {
			return fail(err)
		}
		return h.at("move:" + p.What + "-renamed")
	case errors.Is(err, syscall.EEXIST), errors.Is(err, syscall.ENOTEMPTY):
		return h.conflict(in, p)
	case !errors.Is(err, syscall.EXDEV):
		return fail(err)
	}
	// Across filesystems: copy, verify, swap in; never delete before verify.
	if p.Tmp == "" {
		p.Tmp = filepath.Join(filepath.Dir(p.To), ".mailsync-copy-"+filepath.Base(p.To))
	}
	if err := os.RemoveAll(p.Tmp); err != nil {
		return fail(err)
	}
	if err := copyTree(p.From, p.Tmp); err != nil {
		return fail(fmt.Errorf("copy: %w", err))
	}
	if err := syncTree(p.Tmp); err != nil {
		return fail(err)
	}
	if err := verifyTree(p.From, p.Tmp); err != nil {
		return fail(err)
	}
	p.Verified = true
	if err := h.saveIntent(in); err != nil {
		return err
	}
	if err := h.at("move:" + p.What + "-copied"); err != nil {
		return err
	}
	return h.swapCopy(in, p, fail)
}

// swapCopy puts a verified copy in place, then deletes the original.
func (h *Handler) swapCopy(in *intent, p *pathOp, fail func(error) error) error {
	if err := renameNoReplace(p.Tmp, p.To); err != nil {
		if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return h.conflict(in, p)
		}
		return fail(err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(p.To)); err != nil {
		return fail(err)
	}
	if err := h.at("move:" + p.What + "-swapped"); err != nil {
		return err
	}
	if err := os.RemoveAll(p.From); err != nil {
		return fail(err)
	}
	return atomicfile.SyncDir(filepath.Dir(p.From))
}

// conflict is a move target that exists: nothing is moved or merged.
func (h *Handler) conflict(in *intent, p *pathOp) error {
	if p.What == "home" && h.bornDuring(in, p.To) {
		// Made by Dovecot a moment ago (a login or delivery at the new
		// address): the next attempt sets it aside and renames.
		return fault.Retryable(fmt.Errorf("rename mailbox of entry %s (uuid %s): home %s appeared during the rename; taking it over",
			in.DN, in.UUID, p.To))
	}
	other := "an entry mailsync does not know (the home has no owner marker)"
	if m, ok := readMarker(p.To); ok {
		other = fmt.Sprintf("entry %s (uuid %s, address %q)", m.DN, m.UUID, m.Address)
	}
	return fault.Permanentf("rename mailbox of entry %s (uuid %s) from %q to %q: target %s %s exists already, "+
		"belonging to %s; nothing moved, the mail stays at %s", in.DN, in.UUID, in.Old, in.New, p.What, p.To, other, p.From)
}

// move renames addr old's mailbox to new (rename=yes), making folders in
// it (nil: the default ones).
func (h *Handler) move(ctx context.Context, ev event.Event, oldAddr, newAddr string, folders []string) error {
	oldHome, oldIndex, err := h.locate(ev, oldAddr)
	if err != nil {
		return err
	}
	newHome, newIndex, err := h.locate(ev, newAddr)
	if err != nil {
		return err
	}
	if publicName(newAddr) != "" {
		if err := h.makePublicRoot(); err != nil {
			return fault.Retryable(fmt.Errorf("rename mailbox of %s: %w", where(ev), err))
		}
	}
	in := &intent{V: 1, Op: "move", UUID: ev.UUID, DN: ev.DN, Old: oldAddr, New: newAddr, At: time.Now().UTC(), Folders: folders,
		Ops: []pathOp{{What: "home", Root: h.layoutOf(newHome).Root, From: oldHome, To: newHome}}}
	if oldIndex != "" && newIndex != "" {
		in.Ops = append(in.Ops, pathOp{What: "index", Root: h.index.Root, From: oldIndex, To: newIndex})
	} else if oldIndex != "" {
		// Into the public namespace, which keeps its indexes in the
		// maildir: the separate index is a cache, dropped.
		if err := h.index.Confine(oldIndex); err == nil {
			_ = os.RemoveAll(oldIndex)
		}
	}
	h.fsMu.Lock()
	oldOK, err1 := exists(oldHome)
	newOK, err2 := exists(newHome)
	h.fsMu.Unlock()
	if err := errors.Join(err1, err2); err != nil {
		return fault.Retryable(fmt.Errorf("rename mailbox of %s: %w", where(ev), err))
	}
	if !oldOK {
		// Nothing to move (the user never got mail): the new address just
		// gets its mailbox. The old index, if any, is a cache: dropped.
		h.log.Info().Str("dn", ev.DN).Str("uuid", ev.UUID).Str("path", oldHome).Msg("old home missing; nothing to move")
		if oldIndex != "" {
			if err := h.index.Confine(oldIndex); err == nil {
				_ = os.RemoveAll(oldIndex)
			}
		}
		return h.createKind(ctx, ev, newAddr, folders)
	}
	if oldOK {
		// Race homes set aside before a crash give their messages back first.
		if err := h.drainRaceHomes(ev, oldHome); err != nil {
			return err
		}
	}
	if newOK && raceHome(newHome, ev) {
		if err := h.absorbRaceHome(ctx, ev, newAddr, oldHome, newHome); err != nil {
			return err
		}
		newOK = false
	}
	if newOK {
		h.fsMu.Lock()
		defer h.fsMu.Unlock()
		return h.conflict(in, &in.Ops[0])
	}
	if m, ok := readMarker(oldHome); ok && m.UUID != ev.UUID {
		return fault.Permanentf("rename mailbox of %s from %q to %q: home %s belongs to entry %s (uuid %s); nothing moved",
			where(ev), oldAddr, newAddr, oldHome, m.DN, m.UUID)
	}
	return h.begin(ctx, in)
}
