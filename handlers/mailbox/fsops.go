package mailbox

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"mailsync/atomicfile"

	"golang.org/x/sys/unix"
)

// exists reports whether p exists (without following a final symlink).
func exists(p string) (bool, error) {
	_, err := os.Lstat(p)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// renameNoReplace is rename(2) that fails with EEXIST instead of replacing
// an existing (empty) directory: a home Dovecot created a moment ago for a
// delivery is never swallowed. Filesystems without RENAME_NOREPLACE fall
// back to a check and a plain rename.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if ok, _ := exists(to); ok {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: unix.EEXIST}
		}
		return os.Rename(from, to)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// mkdirOwned creates dir and its missing parents below root with mode 0700
// owned by uid:gid (UCS: mkdir_p with dovemail ownership, reference §1.5).
func mkdirOwned(root, dir string, uid, gid int) error {
	if dir == root || !within(root, dir) {
		return nil
	}
	if ok, err := exists(dir); err != nil || ok {
		return err
	}
	if err := mkdirOwned(root, filepath.Dir(dir), uid, gid); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := os.Lchown(dir, uid, gid); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dir))
}

// copyTree copies the tree at from to to (which must not exist), keeping
// modes, owners and modification times, and fsyncs every file and
// directory so the copy is durable before anything is deleted.
func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
			return os.Lchown(dst, int(st.Uid), int(st.Gid))
		case info.IsDir():
			if err := os.Mkdir(dst, info.Mode().Perm()|0o700); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			if err := copyFile(p, dst, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: cannot copy a %s", p, info.Mode().Type())
		}
		if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if err := os.Chmod(dst, info.Mode().Perm()|info.Mode()&(fs.ModeSetgid|fs.ModeSetuid|fs.ModeSticky)); err != nil {
			return err
		}
		return os.Chtimes(dst, time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix()))
	})
}

func copyFile(from, to string, mode fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// syncTree fsyncs every directory of a tree (files were synced as written).
func syncTree(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return atomicfile.SyncDir(p)
	})
}

// verifyTree checks that copy holds exactly what orig holds: the same
// names, types, modes, owners, sizes and bytes.
func verifyTree(orig, copy string) error {
	seen := map[string]bool{}
	err := filepath.WalkDir(orig, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(orig, p)
		seen[rel] = true
		q := filepath.Join(copy, rel)
		a, err := os.Lstat(p)
		if err != nil {
			return err
		}
		b, err := os.Lstat(q)
		if err != nil {
			return fmt.Errorf("verify copy: %s missing: %w", q, err)
		}
		sa, sb := a.Sys().(*syscall.Stat_t), b.Sys().(*syscall.Stat_t)
		if a.Mode().Type() != b.Mode().Type() || sa.Uid != sb.Uid || sa.Gid != sb.Gid {
			return fmt.Errorf("verify copy: %s differs from %s in type or owner", q, p)
		}
		switch {
		case a.Mode().IsRegular():
			if a.Size() != b.Size() {
				return fmt.Errorf("verify copy: %s has %d bytes, %s has %d", q, b.Size(), p, a.Size())
			}
			return sameContent(p, q)
		case a.Mode()&fs.ModeSymlink != 0:
			ta, _ := os.Readlink(p)
			tb, _ := os.Readlink(q)
			if ta != tb {
				return fmt.Errorf("verify copy: symlink %s differs", q)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return filepath.WalkDir(copy, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(copy, p)
		if !seen[rel] {
			return fmt.Errorf("verify copy: %s has no original", p)
		}
		return nil
	})
}

func sameContent(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("verify copy: %s differs from %s", b, a)
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			if eb != ea {
				return fmt.Errorf("verify copy: %s differs from %s in length", b, a)
			}
			return nil
		}
		if ea != nil {
			return ea
		}
		if eb != nil {
			return eb
		}
	}
}
