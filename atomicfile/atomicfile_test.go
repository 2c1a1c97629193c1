package atomicfile_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"mailsync/atomicfile"
)

func TestWriteReplacesWithModeAndLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "record.json")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil || string(data) != "new" {
		t.Fatalf("after Write: %q, %v; want \"new\"", data, err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d files after Write, want only the record", len(ents))
	}
}

func TestWriteFailureKeepsOldContent(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "record.json")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(filepath.Join(dir, "missing", "x"), []byte("new"), 0o600); err == nil {
		t.Fatal("Write into a missing directory succeeded")
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// rename(2) of a file over a non-empty directory fails.
	if err := atomicfile.Write(filepath.Join(dir, "sub"), []byte("new"), 0o600); err == nil {
		t.Fatal("Write over a non-empty directory succeeded")
	}
	if data, _ := os.ReadFile(p); string(data) != "old" {
		t.Errorf("record changed to %q", data)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("directory holds %d entries after failed Writes, want 2 (no temp file left)", len(ents))
	}
}

// Writes and removes from many goroutines at once: each returns with its
// change made (the shared fsyncs neither lose nor hold one back), and no
// temp file is left.
func TestDirConcurrentWritesAndRemoves(t *testing.T) {
	dir := t.TempDir()
	d := atomicfile.NewDir(dir)
	const n = 200
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("r%03d.json", i)
			if errs[i] = d.Write(name, []byte(name), 0o600); errs[i] != nil {
				return
			}
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				errs[i] = fmt.Errorf("%s missing after its Write returned: %w", name, err)
				return
			}
			if i%2 == 1 {
				errs[i] = d.Remove(name)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != n/2 {
		t.Errorf("%d files left, want %d", len(ents), n/2)
	}
	for _, e := range ents {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if string(data) != e.Name() {
			t.Errorf("%s holds %q", e.Name(), data)
		}
	}
	if err := d.Remove("never-there"); err != nil {
		t.Errorf("removing a file that is not there: %v", err)
	}
}

// TestWriteThen: the step sees the complete temp file before it replaces
// the old content; a failing step leaves the old content and no temp file.
func TestWriteThen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "main.cf")
	if err := atomicfile.Write(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var seen string
	err := atomicfile.WriteThen(path, []byte("new\n"), 0o640, func(tmp string) error {
		data, err := os.ReadFile(tmp)
		seen = string(data)
		if now, _ := os.ReadFile(path); string(now) != "old\n" {
			t.Errorf("path already replaced before the step: %q", now)
		}
		return err
	})
	if err != nil || seen != "new\n" {
		t.Fatalf("WriteThen: %v; the step saw %q", err, seen)
	}
	if data, _ := os.ReadFile(path); string(data) != "new\n" {
		t.Fatalf("after WriteThen: %q", data)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640", st.Mode().Perm())
	}
	refused := errors.New("refused")
	if err := atomicfile.WriteThen(path, []byte("bad\n"), 0o640, func(string) error { return refused }); !errors.Is(err, refused) {
		t.Fatalf("failing step: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "new\n" {
		t.Fatalf("after a failing step: %q", data)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
}
