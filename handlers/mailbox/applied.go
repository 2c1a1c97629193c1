package mailbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"mailsync/atomicfile"
	"mailsync/fault"
)

// appliedStore records, per entryUUID, the state last applied on this host,
// fsynced after every step of a convergence succeeded. A crash before the
// record leaves the old one, and the next convergence redoes the
// (idempotent) steps; a crash after it leaves nothing to do. A gone entry
// keeps a record saying so, so a stale event of it finds the deletion
// applied.
//
// The records are lines appended to one log, <dir>/records.log, whose
// appends made at the same time share a write and an fdatasync (group
// commit): a burst of new users costs no file of its own each (a new
// inode, a rename and an fsync: the most of the handler's own CPU on a
// busy filesystem) and one fsync for many. The last line for an entry is
// its record; a line cut short by a crash is dropped when the log is read
// (its put never returned nil). When the log holds twice as many lines as
// entries it is rewritten with one line each (compact). Records of the
// earlier layout, one file <dir>/<uuid>.json per entry, are still read for
// entries the log does not name yet.
type appliedStore struct {
	dir string

	mu    sync.Mutex
	cache map[string]appliedRecord // the log's records, and earlier files read
	// legacy names the entries with a file of the earlier layout not read
	// yet, listed once at open (nothing writes them since): an entry
	// without a record costs no failed open on every get.
	legacy map[string]bool
	pend   []byte        // lines not written yet
	recs   []appliedLine // their records, cached once durable
	next   *appliedFlush // the round those lines join; nil when none waits

	flushMu sync.Mutex // held by the round whose write runs; guards the fields below
	log     *os.File
	size    int64 // of the log, every line complete
	lines   int   // in the log
	broken  error // a failed write that could not be undone
}

type appliedRecord struct {
	V     int    `json:"v"`
	Gone  bool   `json:"gone,omitempty"`
	State *State `json:"state,omitempty"`
}

// appliedLine is a line of the log: an entry's record.
type appliedLine struct {
	UUID string `json:"uuid"`
	appliedRecord
}

// appliedFlush is one write and fdatasync shared by the puts that joined it.
type appliedFlush struct {
	done chan struct{}
	err  error
}

// appliedLog names the log in the store's directory (no entryUUID has a
// dot: validUUID).
const appliedLog = "records.log"

func newAppliedStore(dir string) (*appliedStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mailbox applied states: %w", err)
	}
	cache, lines, size, err := readAppliedLog(filepath.Join(dir, appliedLog))
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, appliedLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mailbox applied states: %w", err)
	}
	// A line cut short by a crash goes, so the next one starts a line.
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("mailbox applied states: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("mailbox applied states: %w", err)
	}
	legacy, err := legacyApplied(dir)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &appliedStore{dir: dir, cache: cache, legacy: legacy, log: f, size: size, lines: lines}, nil
}

// legacyApplied lists the entries with a record file of the earlier layout
// (<uuid>.json) in dir.
func legacyApplied(dir string) (map[string]bool, error) {
	legacy := map[string]bool{}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return legacy, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mailbox applied states: %w", err)
	}
	for _, e := range ents {
		if u, ok := strings.CutSuffix(e.Name(), ".json"); ok && validUUID(u) && !e.IsDir() {
			legacy[u] = true
		}
	}
	return legacy, nil
}

// readAppliedLog reads the log at path (none: empty): the last record of
// each entry, the number of complete lines, and the size they take. A last
// line without its newline (a write cut short) is not counted.
func readAppliedLog(path string) (map[string]appliedRecord, int, int64, error) {
	cache := map[string]appliedRecord{}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cache, 0, 0, nil
	}
	if err != nil {
		return nil, 0, 0, fmt.Errorf("read applied states %s: %w", path, err)
	}
	var size int64
	lines := 0
	for {
		i := bytes.IndexByte(data[size:], '\n')
		if i < 0 {
			break // the rest has no newline: cut short
		}
		line := data[size : size+int64(i)]
		size += int64(i) + 1
		lines++
		var l appliedLine
		if json.Unmarshal(line, &l) != nil || l.UUID == "" {
			continue
		}
		cache[l.UUID] = l.appliedRecord
	}
	return cache, lines, size, nil
}

// get returns the last applied state (nil: gone, or none) and whether a
// record exists.
func (s *appliedStore) get(uuid string) (*State, bool, error) {
	s.mu.Lock()
	r, ok := s.cache[uuid]
	legacy := s.legacy[uuid]
	s.mu.Unlock()
	if !ok && !legacy {
		return nil, false, nil
	}
	if !ok {
		// The record of the earlier layout.
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
		if _, logged := s.cache[uuid]; !logged {
			s.cache[uuid] = r
		}
		delete(s.legacy, uuid)
		s.mu.Unlock()
		return s.get(uuid)
	}
	if r.Gone || r.State == nil {
		return nil, true, nil
	}
	st := *r.State
	return &st, true, nil
}

// put records st (nil: the entry is gone) as applied, durably, in a write
// it shares with the puts made at the same time.
func (s *appliedStore) put(uuid string, st *State) error {
	// The cache keeps every entry's record: its own copies of the
	// strings, not the event's (a state's address can be cut from the
	// string of the whole event's attributes).
	l := appliedLine{UUID: strings.Clone(uuid), appliedRecord: appliedRecord{V: 1, Gone: st == nil}}
	if st != nil {
		c := *st
		c.DN, c.Address, c.HomeServer, c.CSN, c.ACL = strings.Clone(c.DN), strings.Clone(c.Address),
			strings.Clone(c.HomeServer), strings.Clone(c.CSN), strings.Clone(c.ACL)
		l.State = &c
	}
	data, err := json.Marshal(l)
	if err != nil {
		return fault.Permanent(fmt.Errorf("record applied state of %s: %w", uuid, err))
	}
	s.mu.Lock()
	s.pend = append(append(s.pend, data...), '\n')
	s.recs = append(s.recs, l)
	r := s.next
	lead := r == nil
	if lead {
		r = &appliedFlush{done: make(chan struct{})}
		s.next = r
	}
	s.mu.Unlock()
	if lead {
		s.flush(r)
	}
	<-r.done
	if r.err != nil {
		return fault.Retryable(fmt.Errorf("record applied state of %s: %w", uuid, r.err))
	}
	return nil
}

// flush writes round r's lines: it waits for the write under way (which
// may have taken its lines before r's), closes the round, appends its
// lines and fdatasyncs the log. Once durable, the records are cached, and
// a log grown to twice its entries is compacted.
func (s *appliedStore) flush(r *appliedFlush) {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	defer close(r.done)
	s.mu.Lock()
	buf, recs := s.pend, s.recs
	s.pend, s.recs, s.next = nil, nil, nil
	s.mu.Unlock()
	if r.err = s.broken; r.err != nil {
		return
	}
	if r.err = s.append(buf); r.err != nil {
		return
	}
	s.lines += len(recs)
	s.mu.Lock()
	for _, l := range recs {
		s.cache[l.UUID] = l.appliedRecord
	}
	compact := s.lines > 2*len(s.cache)+1024
	s.mu.Unlock()
	if compact {
		// The records are durable in the log already: a failed
		// compaction leaves the log as it was, and the next one tries.
		_ = s.compact()
	}
}

// append writes buf at the log's end and fdatasyncs it. A failed write is
// cut off again, so the log stays whole lines; if even that fails, every
// later put fails until a restart reads the log again.
func (s *appliedStore) append(buf []byte) error {
	_, err := s.log.Write(buf)
	if err == nil {
		err = unix.Fdatasync(int(s.log.Fd()))
	}
	if err != nil {
		// O_APPEND: the next write goes to the end, after the cut.
		if terr := s.log.Truncate(s.size); terr != nil {
			s.broken = fmt.Errorf("applied states log %s: %w (and cutting the failed write off: %v)", s.log.Name(), err, terr)
		}
		return err
	}
	s.size += int64(len(buf))
	return nil
}

// compact rewrites the log with one line per entry (atomicfile: the old
// log or the new one after a crash) and appends to the new one. Called
// with flushMu held.
func (s *appliedStore) compact() error {
	s.mu.Lock()
	var b bytes.Buffer
	for uuid, r := range s.cache {
		data, _ := json.Marshal(appliedLine{UUID: uuid, appliedRecord: r})
		b.Write(data)
		b.WriteByte('\n')
	}
	n := len(s.cache)
	s.mu.Unlock()
	path := filepath.Join(s.dir, appliedLog)
	if err := atomicfile.Write(path, b.Bytes(), 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		// The new log is in place but not open: appends would go to the
		// old, unlinked one.
		s.broken = fmt.Errorf("reopen compacted applied states log %s: %w", path, err)
		return s.broken
	}
	s.log.Close()
	s.log, s.size, s.lines = f, int64(b.Len()), n
	return nil
}
