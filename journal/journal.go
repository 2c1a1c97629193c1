// Package journal keeps the records of multi-step operations on mailboxes
// (the mailbox handler's intents, the cross-host moves): one JSON file per
// directory entry, named by its entryUUID, in a directory of its own.
//
// A record is written durably (atomicfile: temp file, fsync, rename,
// directory fsync) before an operation's first step and removed, the
// removal fsynced, after its last; a start reads the records left to
// complete what a crash interrupted. Every step of such an operation is
// idempotent, so completing it again is safe. Failures to write, read or
// remove a record are retryable (fault); a record that cannot be decoded is
// permanent and left in place for an operator.
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"mailsync/atomicfile"
	"mailsync/fault"
)

// Journal is one directory of records; what names them in errors
// ("intent record", "move record").
type Journal struct {
	dir  string
	what string
	// files shares the directory fsyncs of records saved and dropped at
	// the same time (many entries converged at once).
	files *atomicfile.Dir
}

// Open returns the journal in dir, made (0700) if missing.
func Open(dir, what string) (*Journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%s dir: %w", what, err)
	}
	return &Journal{dir: dir, what: what, files: atomicfile.NewDir(dir)}, nil
}

// Path is where the record of entry uuid is.
func (j *Journal) Path(uuid string) string { return filepath.Join(j.dir, uuid+".json") }

// Save writes the record of entry uuid durably (0600, owner only: records
// name mailboxes and paths).
func (j *Journal) Save(uuid string, rec any) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fault.Permanent(err)
	}
	if err := j.files.Write(uuid+".json", data, 0o600); err != nil {
		return fault.Retryable(fmt.Errorf("write %s: %w", j.what, err))
	}
	return nil
}

// Load reads the record of entry uuid into rec; false when there is none.
func (j *Journal) Load(uuid string, rec any) (bool, error) {
	data, err := os.ReadFile(j.Path(uuid))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fault.Retryable(fmt.Errorf("read %s of %s: %w", j.what, uuid, err))
	}
	if err := json.Unmarshal(data, rec); err != nil {
		return false, fault.Permanentf("%s %s is unreadable: %v (left for an operator)", j.what, j.Path(uuid), err)
	}
	return true, nil
}

// Drop removes the record of entry uuid, if any, durably.
func (j *Journal) Drop(uuid string) error {
	if err := j.files.Remove(uuid + ".json"); err != nil {
		return fault.Retryable(fmt.Errorf("remove %s: %w", j.what, err))
	}
	return nil
}

// List returns the entryUUIDs that have a record, sorted.
func (j *Journal) List() ([]string, error) {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("read %ss: %w", j.what, err)
	}
	var out []string
	for _, e := range ents {
		if u, ok := strings.CutSuffix(e.Name(), ".json"); ok && !e.IsDir() {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out, nil
}
