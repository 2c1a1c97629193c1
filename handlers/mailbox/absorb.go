package mailbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"mailsync/atomicfile"
	"mailsync/event"
	"mailsync/fault"
)

// Between the directory change and the rename, Dovecot already knows the new
// address: a login or a delivery there makes Dovecot create the new home.
// UCS then refuses the rename for good (reference §1.9.1, §1.6). mailsync
// tells such a home from a reused address's leftover by its birth: made
// after the directory change and carrying no owner marker, it belongs to
// this rename. Its messages are moved into the old home's Maildir, folder by
// folder (each a rename(2), so a crash leaves every message in one of the
// two homes and a rerun moves the rest), and the emptied home goes to the
// trash; then the rename proceeds.

// bornAfterSlack is the slack allowed between the directory's clock (the
// change time, event.ChangeTime) and the filesystem's. A directory that dates
// changes to the second (389-DS) adds up to a second to it.
const bornAfterSlack = 2 * time.Second

// raceHome reports whether home was created by Dovecot after the change ev
// describes: it has no owner marker and was born after the change.
func raceHome(home string, ev event.Event) bool {
	if _, ok := readMarker(home); ok {
		return false
	}
	changed, ok := event.ChangeTime(ev.CSN)
	if !ok {
		return false
	}
	born, ok := birthTime(home)
	if !ok {
		return false
	}
	return !born.Before(changed.Add(-bornAfterSlack))
}

// bornDuring reports whether home, with no owner marker, was created after
// the intent in was written: during the rename, by Dovecot.
func (h *Handler) bornDuring(in *intent, home string) bool {
	if _, ok := readMarker(home); ok {
		return false
	}
	born, ok := birthTime(home)
	return ok && !born.Before(in.At.Add(-bornAfterSlack))
}

// birthTime is a file's creation time (statx btime), or its ctime where the
// filesystem keeps no birth time.
func birthTime(p string) (time.Time, bool) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BTIME|unix.STATX_CTIME, &st); err != nil {
		return time.Time{}, false
	}
	if st.Mask&unix.STATX_BTIME != 0 {
		return time.Unix(st.Btime.Sec, int64(st.Btime.Nsec)), true
	}
	return time.Unix(st.Ctime.Sec, int64(st.Ctime.Nsec)), true
}

// absorbRaceHome takes over the race-created home newHome: the user is
// kicked at the new address, the home is set aside, and its messages are
// moved into oldHome.
func (h *Handler) absorbRaceHome(ctx context.Context, ev event.Event, newAddr, oldHome, newHome string) error {
	if err := h.adm.Kick(ctx, newAddr); err != nil {
		return fmt.Errorf("rename mailbox of %s: kick %s before taking over its new home: %w", where(ev), newAddr, err)
	}
	h.fsMu.Lock()
	defer h.fsMu.Unlock()
	if err := h.home.Confine(newHome); err != nil {
		return fault.Permanentf("rename mailbox of %s: %w", where(ev), err)
	}
	if err := h.setAsideLocked(ev.UUID, newHome); err != nil {
		return fault.Retryable(fmt.Errorf("rename mailbox of %s: set aside %s, created at the new address after the change: %w",
			where(ev), newHome, err))
	}
	return h.drainRaceHomesLocked(ev.UUID, ev.DN, oldHome)
}

// setAsideLocked renames a race home into the trash in one step, under a
// name drainRaceHomes finds: a delivery after that makes a fresh home, which
// the rename then meets and takes over in turn. h.fsMu is held.
func (h *Handler) setAsideLocked(uuid, home string) error {
	trash := filepath.Join(h.home.Root, trashDir, fmt.Sprintf("%s-race-%d", uuid, time.Now().UnixNano()))
	if err := os.MkdirAll(filepath.Dir(trash), 0o700); err != nil {
		return err
	}
	if err := renameNoReplace(home, trash); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(home))
}

// drainRaceHomes moves the messages of every race home set aside for the
// entry into home's Maildir, folder by folder (each a rename(2): a crash
// leaves every message in one place, and the next run moves the rest),
// then removes what is left of them (indexes, uidlists: Dovecot rebuilds
// those).
func (h *Handler) drainRaceHomes(ev event.Event, home string) error {
	h.fsMu.Lock()
	defer h.fsMu.Unlock()
	return h.drainRaceHomesLocked(ev.UUID, ev.DN, home)
}

func (h *Handler) drainRaceHomesLocked(uuid, dn, home string) error {
	set, _ := filepath.Glob(filepath.Join(h.home.Root, trashDir, uuid+"-race-*"))
	for _, src := range set {
		moved, err := h.moveMessages(filepath.Join(src, "Maildir"), filepath.Join(home, "Maildir"))
		if err == nil {
			err = os.RemoveAll(src)
		}
		if err != nil {
			return fault.Retryable(fmt.Errorf("rename mailbox of entry %s (uuid %s): move the messages of %s into %s: %w",
				dn, uuid, src, home, err))
		}
		lvl := h.log.Info()
		if moved > 0 {
			lvl = h.log.Warn()
		}
		lvl.Str("dn", dn).Str("uuid", uuid).Str("path", home).Int("messages", moved).
			Msg("the new address was used before the rename (login or delivery); its home was taken over, its messages joined the renamed mailbox")
	}
	return nil
}

// moveMessages moves the message files of Maildir src (cur and new of
// every folder) into Maildir dst.
func (h *Handler) moveMessages(src, dst string) (int, error) {
	uid, gid := h.owner()
	return moveMessageFiles(h.home.Root, src, uid, gid, func(rel string) string { return filepath.Join(dst, rel) })
}

// moveMessageFiles moves the message files of Maildir src (cur and new of
// every folder), each with one rename(2), to where dest puts their path
// relative to src, making missing directories below root owned by
// uid:gid. A crash leaves every message in one place; a rerun moves the
// rest.
func moveMessageFiles(root, src string, uid, gid int, dest func(rel string) string) (int, error) {
	moved := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return fmt.Errorf("symlink %s in a home whose messages move", p)
		}
		if d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		if dir := filepath.Base(filepath.Dir(rel)); dir != "cur" && dir != "new" {
			return nil
		}
		to := dest(rel)
		if err := mkdirOwned(root, filepath.Dir(to), uid, gid); err != nil {
			return err
		}
		if err := renameNoReplace(p, to); err != nil {
			return err
		}
		moved++
		return atomicfile.SyncDir(filepath.Dir(to))
	})
	return moved, err
}
