package mailbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"mailsync/atomicfile"
	"mailsync/fault"
)

// appliedStore records, per entryUUID, the state last applied on this host:
// one small file per entry in the state dir, written atomically and fsynced
// after every step of a convergence succeeded. A crash before the record
// leaves the old one, and the next convergence redoes the (idempotent)
// steps; a crash after it leaves nothing to do. A gone entry keeps a record
// saying so, so a stale event of it finds the deletion applied.
type appliedStore struct {
	dir   string
	files *atomicfile.Dir // shares the directory fsyncs of concurrent puts
	mu    sync.Mutex
	cache map[string]appliedRecord
}

type appliedRecord struct {
	V     int    `json:"v"`
	Gone  bool   `json:"gone,omitempty"`
	State *State `json:"state,omitempty"`
}

func newAppliedStore(dir string) (*appliedStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mailbox applied states: %w", err)
	}
	return &appliedStore{dir: dir, files: atomicfile.NewDir(dir), cache: map[string]appliedRecord{}}, nil
}

// get returns the last applied state (nil: gone, or none) and whether a
// record exists.
func (s *appliedStore) get(uuid string) (*State, bool, error) {
	s.mu.Lock()
	r, ok := s.cache[uuid]
	s.mu.Unlock()
	if !ok {
		data, err := os.ReadFile(filepath.Join(s.dir, uuid+".json"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fault.Retryable(fmt.Errorf("read applied state of %s: %w", uuid, err))
		}
		if err := json.Unmarshal(data, &r); err != nil {
			// Unreadable (cut short by a full disk): as if never applied;
			// the homes and the event still say where the mailbox is.
			return nil, false, nil
		}
		s.mu.Lock()
		s.cache[uuid] = r
		s.mu.Unlock()
	}
	if r.Gone || r.State == nil {
		return nil, true, nil
	}
	st := *r.State
	return &st, true, nil
}

// put records st (nil: the entry is gone) as applied.
func (s *appliedStore) put(uuid string, st *State) error {
	r := appliedRecord{V: 1, Gone: st == nil}
	if st != nil {
		c := *st
		r.State = &c
	}
	data, _ := json.Marshal(r)
	if err := s.files.Write(uuid+".json", data, 0o600); err != nil {
		return fault.Retryable(fmt.Errorf("record applied state of %s: %w", uuid, err))
	}
	s.mu.Lock()
	s.cache[uuid] = r
	s.mu.Unlock()
	return nil
}
