// Package atomicfile replaces small files so that a reader, or a restart
// after a crash at any point, sees the old content or the new, never a
// mix, and a replacement that returned nil survives a power cut: the
// records mailsync keeps (intents, move records, applied states, owner
// markers, its listener id and NATS keys) and the files it hands Dovecot.
package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with data: a temp file in the same directory, given
// mode, fsynced, renamed over path, then the directory fsynced. A failed
// Write leaves path as it was and no temp file behind.
func Write(path string, data []byte, mode fs.FileMode) error {
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
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
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
