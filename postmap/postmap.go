// Package postmap installs Postfix lookup tables atomically, for every
// handler that materialises a map (aliases, transport).
//
// A table written whole is prepared in a temp file in the target directory
// (source written, database built with postmap, both fsynced), all tables
// at once, since postmap is most of the time; then they are renamed into
// place in the order given, database before source, and the directory is
// fsynced. A Postfix process holding the old database keeps reading it; its
// next open gets the new one. It never sees half a table. A large table
// whose lines take a while to compute can have its database built while
// they are (Stream): `postmap -i` fed through a pipe, into the same temp
// files, committed the same way.
//
// A small change to a large hash or lmdb table the Writer itself installed
// is made in place instead (see update): the changed lines of the live
// source are blanked to comments and their new versions appended, and the
// live database is updated by `postmap -r -i` and `postmap -d`, which hold
// the table's exclusive lock while they write, so a reader sees the table
// before or after each run. The source and the database stay equal as
// tables (`postmap` of the source builds the same database), and the
// bytes written are those of the change, not of the table.
//
// Changes to a handler's tables share writes through its Committer (group
// commit, commit.go); every postmap run takes the caller's context, except
// an update in place, which runs to its end.
package postmap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"mailsync/atomicfile"
)

// Suffixes is the file postmap makes from a source file, per map type.
var Suffixes = map[string]string{"hash": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}

// DefaultIncrementalMin is the table size from which updating a copy of
// the live database beats rebuilding it: below it, one postmap run over the
// whole source costs less than the copy and the two runs of an update.
const DefaultIncrementalMin = 5000

// Writer installs tables into Dir. A Writer that updates tables in place
// must be the only one writing them and must not be copied after use.
type Writer struct {
	Dir       string
	Type      string // hash, lmdb or cdb
	Postmap   string // the postmap binary
	ConfigDir string // postmap -c; empty: postmap's own
	// IncrementalMin: see DefaultIncrementalMin. 0 means every table with
	// a delta is updated in place.
	IncrementalMin int
	// CompactMin is how many bytes of blanked lines a source updated in
	// place may hold before a change that leaves more blanked than live
	// bytes writes the table whole (default 1 MiB; negative: no minimum).
	CompactMin int64
	// Installed, when set, learns each installed table and how long it took
	// from the start of its preparation to its rename (metrics).
	Installed func(table string, took time.Duration)

	mu   sync.Mutex
	live map[string]*liveSource // tables this Writer installed, for update
}

// Table is one table to install: its whole source, and, when the live
// database is known to hold the previous state, the changes since.
type Table struct {
	Name string
	Src  []byte
	// Source, when Src is nil, renders the whole source; it is called only
	// when the table is written whole.
	Source func() []byte
	Delta  *Delta
}

func (t *Table) source() []byte {
	if t.Src == nil && t.Source != nil {
		t.Src = t.Source()
	}
	return t.Src
}

// Delta is what changed in a table: lines to put, keys to delete.
type Delta struct {
	Put []string
	Del []string
}

// Size is the number of lines put and keys deleted.
func (d *Delta) Size() int { return len(d.Put) + len(d.Del) }

// Install writes the tables atomically, renamed into place in the order
// given (put tables that others refer to first). ctx ending stops the
// tables written whole (their temp files go); an update in place, once
// begun, is finished (see update).
func (w *Writer) Install(ctx context.Context, tables ...Table) error {
	if len(tables) == 0 {
		return nil
	}
	// Tables written whole are prepared at once; the ones updated in place
	// wait for their turn in the order.
	ps := make([]*Prepared, len(tables))
	inPlace := make([]*liveSource, len(tables))
	errs := make([]error, len(tables))
	var wg sync.WaitGroup
	for i, t := range tables {
		if inPlace[i] = w.updatable(t); inPlace[i] == nil {
			wg.Go(func() { ps[i], errs[i] = w.Prepare(ctx, t) })
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		Discard(ps...)
		return err
	}
	for i, t := range tables {
		var err error
		if inPlace[i] != nil {
			err = w.update(ctx, t, inPlace[i])
		} else {
			err = w.Commit(ps[i])
		}
		if err != nil {
			Discard(ps...)
			return err
		}
	}
	return nil
}

// Prepared is a table whose source and database are written, fsynced and
// waiting in temp files for Commit; it never touches the live table. A
// caller can prepare each table as soon as its source is known.
type Prepared struct {
	name, tmp, suffix string
	started           time.Time
	index             *liveSource // where each key's line is in the source
}

// Prepare writes one table to temp files in Dir (see prepare).
func (w *Writer) Prepare(ctx context.Context, t Table) (*Prepared, error) {
	suffix, ok := Suffixes[w.Type]
	if !ok {
		return nil, fmt.Errorf("postmap: unknown map type %q", w.Type)
	}
	started := time.Now()
	t.source()
	tmp, err := w.prepare(ctx, t)
	if err != nil {
		return nil, err
	}
	var index *liveSource
	if w.Type == "hash" || w.Type == "lmdb" {
		// Indexed when first updated in place: a table written whole
		// (a start) is not delayed by it.
		index = &liveSource{src: t.Src, size: int64(len(t.Src))}
	}
	return &Prepared{name: t.Name, tmp: tmp, suffix: suffix, started: started, index: index}, nil
}

// Discard removes the temp files of prepared tables not committed; nil
// ones are skipped.
func Discard(ps ...*Prepared) {
	for _, p := range ps {
		if p != nil && p.tmp != "" {
			os.Remove(p.tmp)
			os.Remove(p.tmp + p.suffix)
			p.tmp = ""
		}
	}
}

// Commit renames prepared tables into place in the order given and fsyncs
// the directory. On error, the tables not yet renamed are discarded.
func (w *Writer) Commit(ps ...*Prepared) error {
	for _, p := range ps {
		// The database first, so the source is never newer than the
		// database Postfix compares it with.
		live := filepath.Join(w.Dir, p.name)
		if err := os.Rename(p.tmp+p.suffix, live+p.suffix); err != nil {
			Discard(ps...)
			return fmt.Errorf("rename %s -> %s: %w", p.tmp+p.suffix, live+p.suffix, err)
		}
		if err := os.Rename(p.tmp, live); err != nil {
			Discard(ps...)
			return fmt.Errorf("rename %s -> %s: %w", p.tmp, live, err)
		}
		p.tmp = ""
		w.setLive(p.name, p.index)
	}
	if err := atomicfile.SyncDir(w.Dir); err != nil {
		return fmt.Errorf("fsync %s: %w", w.Dir, err)
	}
	if w.Installed != nil {
		for _, p := range ps {
			w.Installed(p.name, time.Since(p.started))
		}
	}
	return nil
}

// RemoveStale removes temp files a crash left in dir.
func RemoveStale(dir string) {
	stale, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*"))
	for _, f := range stale {
		os.Remove(f)
	}
}

// prepare writes one table's source and database to temp files and fsyncs
// them; it returns the source's temp name (the database's is that plus the
// map type's suffix).
func (w *Writer) prepare(ctx context.Context, t Table) (string, error) {
	suffix := Suffixes[w.Type]
	f, err := os.CreateTemp(w.Dir, "."+t.Name+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", t.Name, err)
	}
	tmp := f.Name()
	fail := func(err error) (string, error) {
		os.Remove(tmp)
		os.Remove(tmp + suffix)
		return "", err
	}
	if _, err = f.Write(t.Src); err == nil {
		err = f.Chmod(0o644)
	}
	if err != nil {
		f.Close()
		return fail(fmt.Errorf("write %s: %w", tmp, err))
	}
	// postmap reads the source from the page cache, so the source is
	// fsynced while postmap runs; both files are durable before prepare
	// returns.
	synced := make(chan error, 1)
	go func() {
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		synced <- err
	}()
	if err := w.build(ctx, tmp); err != nil {
		<-synced
		return fail(err)
	}
	if err := <-synced; err != nil {
		return fail(fmt.Errorf("write %s: %w", tmp, err))
	}
	if err := syncFile(tmp+suffix, 0o644); err != nil {
		return fail(fmt.Errorf("fsync %s: %w", tmp+suffix, err))
	}
	return tmp, nil
}

// build makes the database of the source written to tmp with postmap.
func (w *Writer) build(ctx context.Context, tmp string) error {
	return w.Run(ctx, nil, false, w.Type+":"+tmp)
}

// incremental says whether a table of n lines, changed lines of which
// changed, is updated in place rather than rebuilt: only the map types
// postmap can update (a cdb is only ever built whole), only when the table
// is large and the change small against it.
func (w *Writer) incremental(changed, n int) bool {
	return (w.Type == "hash" || w.Type == "lmdb") && n >= w.IncrementalMin && changed*8 < n
}

// Run runs postmap with args, stdin as its input. With notFoundOK, exit
// status 1 without a message (postmap -d finding none of the keys, which is
// the goal) is success. ctx ending kills postmap.
func (w *Writer) Run(ctx context.Context, stdin *os.File, notFoundOK bool, args ...string) error {
	cmd, stderr := w.command(ctx, args...)
	if stdin != nil {
		// A file, not a pipe: postmap reads it whole even if mailsync dies
		// meanwhile, so a crash never applies half a change.
		cmd.Stdin = stdin
	}
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && notFoundOK && errors.As(err, &exit) && exit.ExitCode() == 1 && stderr.Len() == 0 {
		err = nil
	}
	if err != nil {
		return failed(cmd, err, stderr)
	}
	return nil
}

// command is postmap with args, reading the config dir if one is set, its
// stderr kept for failed.
func (w *Writer) command(ctx context.Context, args ...string) (*exec.Cmd, *bytes.Buffer) {
	if w.ConfigDir != "" {
		args = append([]string{"-c", w.ConfigDir}, args...)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, w.Postmap, args...)
	cmd.Stderr = &stderr
	return cmd, &stderr
}

// failed is the error of command's cmd ending in err: its arguments and
// what it said.
func failed(cmd *exec.Cmd, err error, stderr *bytes.Buffer) error {
	return fmt.Errorf("postmap %s: %w: %s", strings.Join(cmd.Args[1:], " "), err, strings.TrimSpace(stderr.String()))
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
