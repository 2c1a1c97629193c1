package mailbox

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// The applied records survive a restart (a store opened again on the
// directory), the last put of an entry wins, a line cut short by a crash
// is dropped without losing the lines before it or breaking the ones
// after it, a record of the earlier one-file layout is read, and a
// compacted log keeps every entry's last record.
func TestAppliedStoreLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mailbox-applied")
	s, err := newAppliedStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.put(fmt.Sprintf("u%d", i), &State{DN: "uid=x", Address: fmt.Sprintf("a%d@example.org", i)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := s.put("u1", &State{Address: "renamed@example.org"}); err != nil {
		t.Fatal(err)
	}
	if err := s.put("u2", nil); err != nil {
		t.Fatal(err)
	}
	// An entry of the earlier layout.
	if err := os.WriteFile(filepath.Join(dir, "old.json"), []byte(`{"v":1,"state":{"dn":"uid=old","address":"old@example.org"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of a write.
	f, err := os.OpenFile(filepath.Join(dir, appliedLog), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"uuid":"u3","v":1,"state":{"address":"torn`)
	f.Close()

	want := func(s *appliedStore, uuid, addr string, known bool) {
		t.Helper()
		st, ok, err := s.get(uuid)
		switch {
		case err != nil || ok != known:
			t.Errorf("%s: record %v (%v), want %v", uuid, ok, err, known)
		case addr == "" && st != nil, addr != "" && (st == nil || st.Address != addr):
			t.Errorf("%s: %+v, want address %q", uuid, st, addr)
		}
	}
	s2, err := newAppliedStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	want(s2, "u0", "a0@example.org", true)
	want(s2, "u1", "renamed@example.org", true)
	want(s2, "u2", "", true)
	want(s2, "u3", "a3@example.org", true)
	want(s2, "old", "old@example.org", true)
	want(s2, "none", "", false)
	if err := s2.put("u4", &State{Address: "after-the-cut@example.org"}); err != nil {
		t.Fatal(err)
	}
	s3, err := newAppliedStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	want(s3, "u4", "after-the-cut@example.org", true)
	want(s3, "u5", "a5@example.org", true)

	// Rewrites of a few entries grow the log until it is compacted.
	for round := range 300 {
		for u := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s3.put(fmt.Sprintf("u%d", u), &State{Address: fmt.Sprintf("r%d@example.org", round*10+u)}); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	if s3.lines > 2*len(s3.cache)+1024 {
		t.Errorf("%d lines for %d entries: not compacted", s3.lines, len(s3.cache))
	}
	s4, err := newAppliedStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		want(s4, fmt.Sprintf("u%d", i), fmt.Sprintf("r%d@example.org", 2990+i), true)
	}
	want(s4, "u200", "a200@example.org", true)
	want(s4, "old", "old@example.org", true)
}
