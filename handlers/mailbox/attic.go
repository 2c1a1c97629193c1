package mailbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"mailsync/address"
	"mailsync/atomicfile"
)

// The attic keeps the homes that a reused address would otherwise hand to
// its new user: a user deleted (or renamed away) under delete=no, or
// renamed under rename=no, leaves a home at the old address; when another
// entry gets that address, the home moves to <spool>/.attic/<uuid>/<time>
// before the new mailbox is made (toAttic). Dovecot's userdb maps addresses
// to homes, and no valid address maps to a dot directory, so nothing logs
// in there. `mailsync attic list` shows them, `mailsync attic restore`
// brings one back.

// atticStamp is the layout of the <time> directory names.
const atticStamp = "20060102T150405.000000000Z"

// AtticHome is one home in the attic.
type AtticHome struct {
	Path string
	// Owner is the home's marker: the entry that owned it.
	Owner Owner
	// At is when it went to the attic.
	At time.Time
	// Messages counts its message files (every folder).
	Messages int
}

// ListAttic lists the homes in the attic of the layout's spool, oldest
// first.
func ListAttic(l Layout) ([]AtticHome, error) {
	dirs, err := filepath.Glob(filepath.Join(l.Root, AtticDir, "*", "*"))
	if err != nil {
		return nil, err
	}
	var out []AtticHome
	for _, p := range dirs {
		st, err := os.Lstat(p)
		if err != nil || !st.IsDir() {
			continue
		}
		a := AtticHome{Path: p}
		a.At, _ = time.Parse(atticStamp, filepath.Base(p))
		if m, ok := readMarker(p); ok {
			a.Owner = Owner(m)
		} else {
			a.Owner.UUID = filepath.Base(filepath.Dir(p))
		}
		a.Messages = countMessages(p)
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].At.Before(out[j].At) || out[i].At.Equal(out[j].At) && out[i].Path < out[j].Path
	})
	return out, nil
}

// countMessages counts the message files of a home's Maildir.
func countMessages(home string) int {
	n := 0
	_ = filepath.WalkDir(filepath.Join(home, "Maildir"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if dir := filepath.Base(filepath.Dir(p)); dir == "cur" || dir == "new" {
				n++
			}
		}
		return nil
	})
	return n
}

// Restore brings the attic home src back for addr, owned by owner. Nothing
// is overwritten: with no home at addr, src becomes it (one rename(2));
// with one, src's messages go into the new folder `folder` of that home
// (its subfolders below it), and a folder of that name existing already is
// refused, as is an empty folder name. It returns where the mail went.
func Restore(l Layout, src, addr string, owner Owner, folder string) (string, error) {
	src = filepath.Clean(src)
	attic := filepath.Join(l.Root, AtticDir)
	if !within(attic, src) || filepath.Dir(filepath.Dir(src)) != attic {
		return "", fmt.Errorf("%s is not a home in the attic %s", src, attic)
	}
	if err := l.Confine(src); err != nil {
		return "", err
	}
	if st, err := os.Lstat(src); err != nil || !st.IsDir() {
		return "", fmt.Errorf("attic home %s: not a directory (%v)", src, err)
	}
	local, domain, err := ValidateAddress(strings.ToLower(strings.TrimSpace(addr)))
	if err != nil {
		return "", err
	}
	home, err := l.Path(local, domain)
	if err != nil {
		return "", err
	}
	if err := l.Confine(home); err != nil {
		return "", err
	}
	ok, err := exists(home)
	if err != nil {
		return "", err
	}
	st, _ := os.Lstat(l.Root)
	sys := st.Sys().(*syscall.Stat_t)
	uid, gid := int(sys.Uid), int(sys.Gid)
	if !ok {
		if err := mkdirOwned(l.Root, filepath.Dir(home), uid, gid); err != nil {
			return "", err
		}
		if err := renameNoReplace(src, home); err != nil {
			return "", fmt.Errorf("restore %s to %s: %w", src, home, err)
		}
		if err := errors.Join(atomicfile.SyncDir(filepath.Dir(home)), atomicfile.SyncDir(filepath.Dir(src))); err != nil {
			return "", err
		}
		_ = os.Remove(filepath.Dir(src)) // the entry's attic dir, once empty
		if owner.UUID != "" {
			if err := writeMarker(home, marker(owner)); err != nil {
				return "", err
			}
		} else {
			_ = os.Remove(filepath.Join(home, MarkerFile))
		}
		return home, nil
	}
	if folder == "" {
		return "", fmt.Errorf("%s has a home at %s already; refusing to overwrite it (name a new folder to restore into)", addr, home)
	}
	if err := address.PathComponent(folder); err != nil || strings.ContainsAny(folder, ".") {
		return "", fmt.Errorf("folder %q: want a plain folder name (no dots, slashes or spaces)", folder)
	}
	if hs, err := os.Lstat(home); err == nil {
		s := hs.Sys().(*syscall.Stat_t)
		uid, gid = int(s.Uid), int(s.Gid)
	}
	dstRoot := filepath.Join(home, "Maildir", "."+folder)
	if ok, _ := exists(dstRoot); ok {
		return "", fmt.Errorf("folder %s of %s exists already; refusing to overwrite it", folder, addr)
	}
	// Maildir++: INBOX becomes .<folder>, .Projects becomes .<folder>.Projects.
	folderOf := func(rel string) string {
		sub := filepath.Dir(filepath.Dir(rel))
		if sub == "." {
			return dstRoot
		}
		return filepath.Join(home, "Maildir", "."+folder+sub)
	}
	srcMaildir := filepath.Join(src, "Maildir")
	_, err = moveMessageFiles(l.Root, srcMaildir, uid, gid, func(rel string) string {
		return filepath.Join(folderOf(rel), filepath.Base(filepath.Dir(rel)), filepath.Base(rel))
	})
	if err == nil {
		// Each new folder needs its tmp and the maildirfolder mark.
		dirs, _ := filepath.Glob(filepath.Join(home, "Maildir", "."+folder+".*"))
		dirs = append(dirs, dstRoot)
		for _, dst := range dirs {
			if err = maildirFolder(l.Root, dst, uid, gid); err != nil {
				break
			}
		}
	}
	if err != nil {
		return "", fmt.Errorf("restore %s into folder %s of %s: %w (what moved is there, the rest still in the attic)", src, folder, addr, err)
	}
	if err := os.RemoveAll(src); err != nil {
		return "", err
	}
	_ = os.Remove(filepath.Dir(src))
	return dstRoot, nil
}

// maildirFolder completes a Maildir++ folder: cur, new, tmp and the
// maildirfolder mark.
func maildirFolder(root, dir string, uid, gid int) error {
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := mkdirOwned(root, filepath.Join(dir, sub), uid, gid); err != nil {
			return err
		}
	}
	mf := filepath.Join(dir, "maildirfolder")
	if ok, _ := exists(mf); ok {
		return nil
	}
	if err := os.WriteFile(mf, nil, 0o600); err != nil {
		return err
	}
	return os.Lchown(mf, uid, gid)
}
