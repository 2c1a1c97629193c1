package aliases

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// install writes one table atomically: the source goes to a temp file in
// the target directory, postmap builds the database next to it, both are
// fsynced, then renamed over the live files (database first, so the source
// is never newer than the database Postfix compares it with), and the
// directory is fsynced. A reader holding the old database keeps reading it;
// the next open gets the new one.
func (h *Handler) install(name string, src []byte) error {
	dir := h.cfg.Dir
	suffix := mapSuffix[h.cfg.MapType]
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	cleanup := func() {
		os.Remove(tmp)
		os.Remove(tmp + suffix)
	}
	if _, err := f.Write(src); err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		cleanup()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	args := []string{}
	if h.cfg.PostfixConfigDir != "" {
		args = append(args, "-c", h.cfg.PostfixConfigDir)
	}
	args = append(args, h.cfg.MapType+":"+tmp)
	var stderr bytes.Buffer
	cmd := exec.Command(h.cfg.PostmapPath, args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		cleanup()
		return fmt.Errorf("postmap %s:%s: %w: %s", h.cfg.MapType, tmp, err, strings.TrimSpace(stderr.String()))
	}
	if err := syncFile(tmp+suffix, 0o644); err != nil {
		cleanup()
		return fmt.Errorf("fsync %s: %w", tmp+suffix, err)
	}
	live := filepath.Join(dir, name)
	if err := os.Rename(tmp+suffix, live+suffix); err != nil {
		cleanup()
		return fmt.Errorf("rename %s -> %s: %w", tmp+suffix, live+suffix, err)
	}
	if err := os.Rename(tmp, live); err != nil {
		cleanup()
		return fmt.Errorf("rename %s -> %s: %w", tmp, live, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func syncFile(path string, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Chmod(mode)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Markers of the block mailsync owns in main.cf.local; the rest of the
// file is the admin's and kept as it is.
const (
	mainCFBegin = "# BEGIN mailsync aliases: groups over virtual_alias_expansion_limit"
	mainCFEnd   = "# END mailsync aliases"
)

// writeMainCFLocal puts the expansion-limit line for n recipients into
// mailsync's block of path, or removes the block when n is 0; atomically.
func writeMainCFLocal(path string, n int) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var kept []string
	in := false
	for _, l := range strings.SplitAfter(string(old), "\n") {
		switch {
		case strings.TrimRight(l, "\n") == mainCFBegin:
			in = true
		case strings.TrimRight(l, "\n") == mainCFEnd && in:
			in = false
		case !in && l != "":
			kept = append(kept, l)
		}
	}
	out := strings.Join(kept, "")
	if n > 0 {
		if out != "" && !strings.HasSuffix(out, "\n") {
			out += "\n"
		}
		out += mainCFBegin + "\n" + MainCFLine(n) + "\n" + mainCFEnd + "\n"
	}
	if out == string(old) {
		return nil
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = f.WriteString(out); err == nil {
		if err = f.Chmod(0o644); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}
