package postmap_test

import (
	"os"
	"path/filepath"
	"testing"

	"mailsync/internal/testenv"
	"mailsync/postmap"
)

func TestInstallAtomicDeltaAndFailure(t *testing.T) {
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	w := postmap.Writer{Dir: dir, Type: "hash", Postmap: pf.Postmap, ConfigDir: pf.ConfigDir}
	if err := w.Install(postmap.Table{Name: "a", Src: []byte("x@example.org y@example.org\n")},
		postmap.Table{Name: "b", Src: []byte("k v\n")}); err != nil {
		t.Fatal(err)
	}
	table := "hash:" + filepath.Join(dir, "a")
	if got := pf.Query(t, table, "x@example.org")["x@example.org"]; got != "y@example.org" {
		t.Fatalf("lookup after install: %q", got)
	}
	// A delta updates a copy of the live database in place.
	w.IncrementalMin = 0
	src := []byte("x@example.org z@example.org\nn@example.org m@example.org\n" + fill(20))
	if err := w.Install(postmap.Table{Name: "a", Src: src,
		Delta: &postmap.Delta{Put: []string{"x@example.org z@example.org", "n@example.org m@example.org"}}}); err != nil {
		t.Fatal(err)
	}
	r := pf.Query(t, table, "x@example.org", "n@example.org")
	if r["x@example.org"] != "z@example.org" || r["n@example.org"] != "m@example.org" {
		t.Fatalf("lookup after delta: %v", r)
	}
	// A failing postmap leaves the live table as it was and no temp files.
	bad := w
	bad.Postmap = "/bin/false"
	if err := bad.Install(postmap.Table{Name: "a", Src: []byte("x@example.org broken@example.org\n")}); err == nil {
		t.Fatal("install with a failing postmap succeeded")
	}
	if got := pf.Query(t, table, "x@example.org")["x@example.org"]; got != "z@example.org" {
		t.Fatalf("live table changed by a failed install: %q", got)
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(tmps) != 0 {
		t.Fatalf("temp files left: %v", tmps)
	}
	os.WriteFile(filepath.Join(dir, ".a.tmp-123"), []byte("x"), 0o600)
	postmap.RemoveStale(dir)
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(tmps) != 0 {
		t.Fatalf("stale temp files not removed: %v", tmps)
	}
}

func fill(n int) string {
	s := ""
	for i := 0; i < n; i++ {
		s += "filler" + string(rune('a'+i)) + "@example.org f@example.org\n"
	}
	return s
}
