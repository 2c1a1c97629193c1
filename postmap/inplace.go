package postmap

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// liveSource is where each key's line is in a live source file this Writer
// wrote, so that a change can blank (comment out) the lines it replaces.
type liveSource struct {
	lines   map[string]span
	size    int64 // bytes of the file
	garbage int64 // bytes of blanked lines, newlines included
	// src is the source as written, until lines are made from it (index,
	// at the first update); a caller never changes a source it handed to
	// the Writer.
	src []byte
}

// span is one line of the file, without its newline.
type span struct {
	off int64
	n   int32
}

// index finds, once, the line of every key in a source written whole, of
// one line per key as mailsync writes them ("key value", no comments, no
// continuations). The keys are copied: the index must not hold the source.
func (l *liveSource) index() {
	if l.lines != nil {
		return
	}
	src := l.src
	l.src = nil
	l.lines = make(map[string]span, bytes.Count(src, []byte{'\n'}))
	l.size = int64(len(src))
	for off := 0; off < len(src); {
		end := bytes.IndexByte(src[off:], '\n')
		if end < 0 {
			end = len(src) - off
		}
		line := src[off : off+end]
		if k, _, _ := bytes.Cut(line, []byte{' '}); len(k) > 0 {
			l.lines[string(k)] = span{off: int64(off), n: int32(len(line))}
		}
		off += end + 1
	}
}

func (w *Writer) setLive(name string, l *liveSource) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if l == nil {
		delete(w.live, name)
		return
	}
	if w.live == nil {
		w.live = map[string]*liveSource{}
	}
	w.live[name] = l
}

// updatable returns the live index of a table whose change is to be made
// in place, or nil when the table is to be written whole: no delta, a map
// type postmap cannot update, a table this Writer did not install (or whose
// last update failed), a change too large against the table (in lines, or
// in bytes: more than half of the live table's), or a source
// that would then be more blanked lines than live ones (the whole write
// compacts it).
func (w *Writer) updatable(t Table) *liveSource {
	d := t.Delta
	if d == nil {
		return nil
	}
	w.mu.Lock()
	l := w.live[t.Name]
	w.mu.Unlock()
	if l != nil {
		l.index()
	}
	if l == nil || !w.incremental(d.Size(), len(l.lines)) {
		return nil
	}
	// Few lines can still be most of the table's bytes (a burst of
	// membership changes reaching most groups: the groups' lines are most
	// of the alias table). postmap updating that much of a hash database
	// in place took longer than building it whole (at 100k users, 20k
	// changes: 0.8 s against 0.5-0.6 s), and left as much garbage.
	var put int64
	for _, line := range d.Put {
		put += int64(len(line)) + 1
	}
	if 2*put > l.size-l.garbage {
		return nil
	}
	var blanked int64
	for _, k := range d.Del {
		if sp, ok := l.lines[k]; ok {
			blanked += int64(sp.n) + 1
		}
	}
	for _, line := range d.Put {
		if sp, ok := l.lines[lineKey(line)]; ok {
			blanked += int64(sp.n) + 1
		}
	}
	least := w.CompactMin
	if least == 0 {
		least = 1 << 20
	}
	if garbage := l.garbage + blanked; garbage > least && garbage*2 > l.size {
		return nil
	}
	return l
}

func lineKey(line string) string {
	k, _, _ := strings.Cut(line, " ")
	return k
}

// update makes a delta in place (see the package doc). The source is
// changed first and fsynced, then the database, so the database is never
// older than its source (Postfix warns about a source newer than its
// database). New lines go in before deletions: a key that moves is found
// at one of its addresses all along. A failure forgets the index, so the
// next write of the table is whole and puts source and database right.
//
// What the two steps do not give: a crash between them leaves the source
// ahead of the database until the next whole write (mailsync writes every
// table whole when it starts); and a hash database is not crash-safe while
// postmap writes it (Berkeley DB without transactions), which lmdb is.
//
// ctx does not stop an update once it has begun: killing postmap while it
// writes the live hash database could leave it broken, which a reader
// would see; it runs to its end whatever ctx does.
func (w *Writer) update(ctx context.Context, t Table, l *liveSource) (err error) {
	ctx = context.WithoutCancel(ctx)
	w.setLive(t.Name, nil)
	started := time.Now()
	path := filepath.Join(w.Dir, t.Name)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("update %s: %w", path, cerr)
		}
	}()
	if st, err := f.Stat(); err != nil || st.Size() != l.size {
		return fmt.Errorf("update %s: not the file mailsync last wrote (%v)", path, err)
	}
	blank := func(k string) error {
		sp, ok := l.lines[k]
		if !ok {
			return nil
		}
		// The line becomes a comment: its first byte is enough.
		if _, err := f.WriteAt([]byte{'#'}, sp.off); err != nil {
			return err
		}
		delete(l.lines, k)
		l.garbage += int64(sp.n) + 1
		return nil
	}
	d := t.Delta
	appendAt := l.size
	var add []byte
	for _, line := range d.Put {
		k := lineKey(line)
		if err := blank(k); err != nil {
			return fmt.Errorf("update %s: %w", path, err)
		}
		l.lines[strings.Clone(k)] = span{off: appendAt + int64(len(add)), n: int32(len(line))}
		add = append(append(add, line...), '\n')
	}
	for _, k := range d.Del {
		if err := blank(k); err != nil {
			return fmt.Errorf("update %s: %w", path, err)
		}
	}
	if _, err := f.WriteAt(add, appendAt); err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	l.size += int64(len(add))
	// The source is fsynced while postmap updates the database.
	synced := make(chan error, 1)
	go func() { synced <- f.Sync() }()
	defer func() {
		if serr := <-synced; err == nil && serr != nil {
			err = fmt.Errorf("fsync %s: %w", path, serr)
		}
	}()

	table := w.Type + ":" + path
	if len(add) > 0 {
		// postmap reads the appended lines straight from the source.
		in, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("update %s: %w", path, err)
		}
		_, err = in.Seek(appendAt, 0)
		if err == nil {
			err = w.Run(ctx, in, false, "-r", "-i", table)
		}
		in.Close()
		if err != nil {
			return err
		}
	}
	if len(d.Del) > 0 {
		if err := w.deleteKeys(ctx, d.Del, table); err != nil {
			return err
		}
	}
	if err := syncFile(path+Suffixes[w.Type], 0o644); err != nil {
		return fmt.Errorf("fsync %s: %w", path+Suffixes[w.Type], err)
	}
	if err := <-synced; err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	synced <- nil // for the deferred check
	w.setLive(t.Name, l)
	if w.Installed != nil {
		w.Installed(t.Name, time.Since(started))
	}
	return nil
}

// deleteKeys runs postmap -d over keys, read from a temp file.
func (w *Writer) deleteKeys(ctx context.Context, keys []string, table string) error {
	f, err := os.CreateTemp(w.Dir, ".delete.tmp-*")
	if err != nil {
		return fmt.Errorf("postmap -d %s: %w", table, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err = f.WriteString(strings.Join(keys, "\n") + "\n"); err == nil {
		_, err = f.Seek(0, 0)
	}
	if err != nil {
		return fmt.Errorf("postmap -d %s: %w", table, err)
	}
	// None of the keys found is the goal too.
	return w.Run(ctx, f, true, "-d", "-", table)
}
