package postmap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Stream is a table written whole whose database postmap builds while the
// caller is still computing its lines: `postmap -i` on a new database in a
// temp file, fed the lines through a pipe as they come, in any order; the
// source, sorted, is written when all are known (Finish). What Prepare
// makes of the source, Finish makes: the same temp files, fsynced, for
// Commit, and a database holding the source's entries. Only hash and lmdb
// databases are updated by `postmap -i`; for other map types the lines are
// dropped and Finish prepares the source as Prepare does.
type Stream struct {
	w       *Writer
	ctx     context.Context
	name    string
	started time.Time
	// Nil for a map type postmap -i cannot build.
	f      *os.File // the source's temp file; the database's is its name plus the suffix
	lines  chan []byte
	fed    chan error // the feeding goroutine's outcome, once lines is closed
	built  chan error // postmap's
	cancel context.CancelFunc
	closed bool
}

// Stream starts building the database of table name (see Stream).
func (w *Writer) Stream(ctx context.Context, name string) (*Stream, error) {
	if _, ok := Suffixes[w.Type]; !ok {
		return nil, fmt.Errorf("postmap: unknown map type %q", w.Type)
	}
	s := &Stream{w: w, ctx: ctx, name: name, started: time.Now()}
	if w.Type != "hash" && w.Type != "lmdb" {
		return s, nil
	}
	f, err := os.CreateTemp(w.Dir, "."+name+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("postmap %s: %w", name, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cmd, stderr := w.command(cctx, "-i", w.Type+":"+f.Name())
	cmd.Stdin = pr
	err = cmd.Start()
	pr.Close()
	if err != nil {
		cancel()
		pw.Close()
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("postmap %s: %w", strings.Join(cmd.Args[1:], " "), err)
	}
	s.f, s.cancel = f, cancel
	// Lines are queued, not written by Put: a caller computing them is
	// never held up by postmap.
	s.lines = make(chan []byte, 1<<14)
	s.fed, s.built = make(chan error, 1), make(chan error, 1)
	go func() {
		var err error
		for b := range s.lines {
			if err == nil {
				_, err = pw.Write(b)
			}
		}
		if cerr := pw.Close(); err == nil {
			err = cerr
		}
		s.fed <- err
	}()
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = failed(cmd, err, stderr)
		}
		s.built <- err
	}()
	return s, nil
}

// Put gives postmap lines of the table: whole lines, each ending in a
// newline, each key once over all the calls. lines must not change
// afterwards. Not safe for concurrent use.
func (s *Stream) Put(lines []byte) {
	if s.lines != nil && len(lines) > 0 {
		s.lines <- lines
	}
}

// Finish writes src, the table's whole source, which must hold exactly the
// lines put, waits for postmap and returns the table prepared, as Prepare
// does. On error the temp files are removed.
func (s *Stream) Finish(src []byte) (*Prepared, error) {
	if s.f == nil {
		return s.w.Prepare(s.ctx, Table{Name: s.name, Src: src})
	}
	suffix := Suffixes[s.w.Type]
	tmp := s.f.Name()
	// The source is written before postmap gets the end of its input, and
	// the database's time set once postmap is done, so that the database
	// is never older than its source (Postfix warns of it); the source is
	// fsynced while postmap finishes.
	_, err := s.f.Write(src)
	if err == nil {
		err = s.f.Chmod(0o644)
	}
	synced := make(chan error, 1)
	if err != nil {
		s.f.Close()
		synced <- err
	} else {
		go func() {
			err := s.f.Sync()
			if cerr := s.f.Close(); err == nil {
				err = cerr
			}
			synced <- err
		}()
	}
	s.closed = true
	close(s.lines)
	ferr := <-s.fed
	berr := <-s.built
	s.cancel()
	serr := <-synced
	if serr != nil {
		serr = fmt.Errorf("write %s: %w", tmp, serr)
	}
	if ferr != nil {
		ferr = fmt.Errorf("postmap %s: feeding the lines: %w", s.name, ferr)
	}
	err = errors.Join(serr, ferr)
	if berr != nil {
		// postmap's own error says why the pipe broke.
		err = errors.Join(berr, serr)
	}
	if err != nil {
		os.Remove(tmp)
		os.Remove(tmp + suffix)
		return nil, err
	}
	now := time.Now()
	if err := os.Chtimes(tmp+suffix, now, now); err != nil {
		os.Remove(tmp)
		os.Remove(tmp + suffix)
		return nil, fmt.Errorf("postmap %s: %w", s.name, err)
	}
	if err := syncFile(tmp+suffix, 0o644); err != nil {
		os.Remove(tmp)
		os.Remove(tmp + suffix)
		return nil, fmt.Errorf("fsync %s: %w", tmp+suffix, err)
	}
	return &Prepared{name: s.name, tmp: tmp, suffix: suffix, started: s.started,
		index: &liveSource{src: src, size: int64(len(src))}}, nil
}

// Abort stops a stream not finished: postmap is killed and the temp files
// removed.
func (s *Stream) Abort() {
	if s.f == nil || s.closed {
		return
	}
	s.closed = true
	s.cancel()
	close(s.lines)
	<-s.fed
	<-s.built
	s.f.Close()
	os.Remove(s.f.Name())
	os.Remove(s.f.Name() + Suffixes[s.w.Type])
}
