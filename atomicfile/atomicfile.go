// Package atomicfile replaces small files so that a reader, or a restart
// after a crash at any point, sees the old content or the new, never a
// mix, and a replacement that returned nil survives a power cut: the
// records mailsync keeps (intents, move records, applied states, owner
// markers, its listener id and NATS keys) and the files it hands Dovecot.
package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Write replaces path with data: a temp file in the same directory, given
// mode, fsynced, renamed over path, then the directory fsynced. A failed
// Write leaves path as it was and no temp file behind.
func Write(path string, data []byte, mode fs.FileMode) error {
	if err := replace(path, data, mode); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// WriteThen is Write with a step run on the complete, fsynced temp file
// just before it is renamed over path: what must be in place before the
// file is (a Postfix map's database built from it), or a change to it (its
// date). A failing step leaves path as it was and no temp file behind.
func WriteThen(path string, data []byte, mode fs.FileMode, before func(tmp string) error) error {
	if err := replaceThen(path, data, mode, before); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// replace is Write without the directory fsync.
func replace(path string, data []byte, mode fs.FileMode) error {
	return replaceThen(path, data, mode, nil)
}

func replaceThen(path string, data []byte, mode fs.FileMode, before func(tmp string) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err = f.Write(data); err == nil {
		if err = f.Chmod(mode); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && before != nil {
		err = before(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// SyncDir fsyncs a directory, making a create, rename or remove in it
// durable.
func SyncDir(dir string) error {
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

// Dir is a directory of records written by many goroutines at once (one
// per entry converged): its Write and Remove are as durable as the
// package's Write, but the directory fsyncs they need are shared. A call
// waits for an fsync that began after its own change, and every change made
// while one fsync runs is covered by the next: under load one fsync serves
// many records instead of one each (group commit).
type Dir struct {
	path    string
	mu      sync.Mutex
	next    *dirSync   // the round callers join; nil when none waits
	flushMu sync.Mutex // held by the round whose fsync runs
}

// dirSync is one directory fsync shared by the calls that joined it.
type dirSync struct {
	done chan struct{}
	err  error
}

// NewDir returns the directory path (which must exist) as a Dir.
func NewDir(path string) *Dir { return &Dir{path: path} }

// Path is the directory's path.
func (d *Dir) Path() string { return d.path }

// Write replaces the file name in d with data, as Write does.
func (d *Dir) Write(name string, data []byte, mode fs.FileMode) error {
	if err := replace(filepath.Join(d.path, name), data, mode); err != nil {
		return err
	}
	return d.Sync()
}

// Remove removes the file name from d, durably; a file that is not there
// is no error.
func (d *Dir) Remove(name string) error {
	if err := os.Remove(filepath.Join(d.path, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return d.Sync()
}

// Sync makes every change made in d before the call durable.
func (d *Dir) Sync() error {
	d.mu.Lock()
	r := d.next
	lead := r == nil
	if lead {
		r = &dirSync{done: make(chan struct{})}
		d.next = r
	}
	d.mu.Unlock()
	if lead {
		// Wait for the fsync under way (it may have begun before the
		// changes of this round), then close the round and run one.
		d.flushMu.Lock()
		d.mu.Lock()
		d.next = nil
		d.mu.Unlock()
		r.err = SyncDir(d.path)
		d.flushMu.Unlock()
		close(r.done)
	}
	<-r.done
	return r.err
}
