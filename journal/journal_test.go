package journal_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"mailsync/fault"
	"mailsync/journal"
)

type rec struct {
	Op   string `json:"op"`
	Step int    `json:"step"`
}

// A record saved is read back and listed, owner-only on disk; dropped, it
// is gone; an unreadable one is a permanent error naming its file.
func TestSaveLoadDropList(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "records")
	j, err := journal.Open(dir, "intent record")
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Save("b-uuid", rec{Op: "move", Step: 2}); err != nil {
		t.Fatal(err)
	}
	if err := j.Save("a-uuid", rec{Op: "delete"}); err != nil {
		t.Fatal(err)
	}
	var got rec
	if ok, err := j.Load("b-uuid", &got); err != nil || !ok || got != (rec{Op: "move", Step: 2}) {
		t.Fatalf("Load: %v %v %+v", ok, err, got)
	}
	if st, err := os.Stat(j.Path("b-uuid")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("record mode: %v %v", st.Mode(), err)
	}
	if l, err := j.List(); err != nil || !slices.Equal(l, []string{"a-uuid", "b-uuid"}) {
		t.Fatalf("List: %v %v", l, err)
	}
	if err := j.Drop("b-uuid"); err != nil {
		t.Fatal(err)
	}
	if ok, err := j.Load("b-uuid", &got); ok || err != nil {
		t.Fatalf("Load after Drop: %v %v", ok, err)
	}
	if err := j.Drop("b-uuid"); err != nil {
		t.Fatalf("Drop of a record not there: %v", err)
	}
	if err := os.WriteFile(j.Path("c-uuid"), []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = j.Load("c-uuid", &got)
	if !fault.IsPermanent(err) {
		t.Fatalf("unreadable record: %v, want a permanent error", err)
	}
	if l, _ := j.List(); !slices.Equal(l, []string{"a-uuid", "c-uuid"}) {
		t.Fatalf("List keeps the unreadable record for an operator: %v", l)
	}
}
