package aliases

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// write installs the tables atomically. Each is prepared in a temp file in
// the target directory (source written, database built, both fsynced), all
// at once, since postmap is most of the time; then they are renamed into
// place in order, domains and mailboxes before aliases, so a new alias
// never points at a mailbox Postfix does not know yet; then the directory
// is fsynced once. A reader holding an old database keeps reading it; the
// next open gets the new one.
func (h *Handler) write(tables []table) error {
	if len(tables) == 0 {
		return nil
	}
	tmps := make([]string, len(tables))
	errs := make([]error, len(tables))
	var wg sync.WaitGroup
	for i, t := range tables {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tmps[i], errs[i] = h.prepare(t)
		}()
	}
	wg.Wait()
	suffix := mapSuffix[h.cfg.MapType]
	cleanup := func() {
		for _, tmp := range tmps {
			if tmp != "" {
				os.Remove(tmp)
				os.Remove(tmp + suffix)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		cleanup()
		return err
	}
	for i, t := range tables {
		// The database first, so the source is never newer than the
		// database Postfix compares it with.
		live := filepath.Join(h.cfg.Dir, t.name)
		if err := os.Rename(tmps[i]+suffix, live+suffix); err != nil {
			cleanup()
			return fmt.Errorf("rename %s -> %s: %w", tmps[i]+suffix, live+suffix, err)
		}
		if err := os.Rename(tmps[i], live); err != nil {
			cleanup()
			return fmt.Errorf("rename %s -> %s: %w", tmps[i], live, err)
		}
		tmps[i] = ""
		h.writes.Add(1)
	}
	if err := syncDir(h.cfg.Dir); err != nil {
		return fmt.Errorf("fsync %s: %w", h.cfg.Dir, err)
	}
	return nil
}

// prepare writes one table's source and database to temp files and fsyncs
// them; it returns the source's temp name (the database's is that plus the
// map type's suffix). With a delta, the database is a copy of the live one
// updated in place (postmap -d, postmap -r -i): a change to a large map
// then costs its few keys, not a rebuild.
func (h *Handler) prepare(t table) (string, error) {
	dir := h.cfg.Dir
	suffix := mapSuffix[h.cfg.MapType]
	f, err := os.CreateTemp(dir, "."+t.name+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", t.name, err)
	}
	tmp := f.Name()
	fail := func(err error) (string, error) {
		os.Remove(tmp)
		os.Remove(tmp + suffix)
		return "", err
	}
	if _, err := f.Write(t.src); err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(fmt.Errorf("write %s: %w", tmp, err))
	}
	table := h.cfg.MapType + ":" + tmp
	if d := t.delta; d != nil && h.incremental(d.size(), bytes.Count(t.src, []byte{'\n'})) {
		if err := copyFile(filepath.Join(dir, t.name)+suffix, tmp+suffix); err != nil {
			return fail(fmt.Errorf("copy %s database: %w", t.name, err))
		}
		if len(d.del) > 0 {
			if err := h.postmap(strings.Join(d.del, "\n")+"\n", true, "-d", "-", table); err != nil {
				return fail(err)
			}
		}
		if len(d.put) > 0 {
			if err := h.postmap(strings.Join(d.put, "\n")+"\n", false, "-r", "-i", table); err != nil {
				return fail(err)
			}
		}
	} else if err := h.postmap("", false, table); err != nil {
		return fail(err)
	}
	if err := syncFile(tmp+suffix, 0o644); err != nil {
		return fail(fmt.Errorf("fsync %s: %w", tmp+suffix, err))
	}
	return tmp, nil
}

// incrementalMin is the table size from which updating a copy of the live
// database beats rebuilding it: below it, one postmap run over the whole
// source costs less than the copy and the two runs of an update.
const incrementalMin = 5000

// incremental says whether a table of n lines, changed lines of which
// changed, is updated in place rather than rebuilt: only the map types
// postmap can update (a cdb is only ever built whole), only when the table
// is large and the change small against it.
func (h *Handler) incremental(changed, n int) bool {
	return (h.cfg.MapType == "hash" || h.cfg.MapType == "lmdb") && n >= h.incrementalMin && changed*8 < n
}

// postmap runs postmap with args, stdin as its input. With notFoundOK,
// exit status 1 without a message (postmap -d finding none of the keys,
// which is the goal) is success.
func (h *Handler) postmap(stdin string, notFoundOK bool, args ...string) error {
	if h.cfg.PostfixConfigDir != "" {
		args = append([]string{"-c", h.cfg.PostfixConfigDir}, args...)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(h.cfg.PostmapPath, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && notFoundOK && errors.As(err, &exit) && exit.ExitCode() == 1 && stderr.Len() == 0 {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("postmap %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
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
