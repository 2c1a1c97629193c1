package postmap_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"mailsync/internal/testenv"
	"mailsync/postmap"
)

// A streamed table: lines put in any order while the source is unknown,
// then the sorted source; once committed, the database holds the source's
// entries, is not older than the source, and no temp file is left. For
// cdb, which postmap -i cannot build, the lines are dropped and the source
// prepared whole. A failing postmap leaves no temp files, nor does Abort.
func TestStream(t *testing.T) {
	ctx := context.Background()
	pf := testenv.StartPostfix(t)
	var lines []string
	for i := range 2000 {
		lines = append(lines, fmt.Sprintf("k%04d@example.org v%d@example.org,w%d@example.org", i, i, i))
	}
	sorted := append([]string(nil), lines...)
	sort.Strings(sorted)
	src := []byte(strings.Join(sorted, "\n") + "\n")
	want := map[string]string{}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, " ")
		want[k] = v
	}
	for _, typ := range []string{"hash", "lmdb", "cdb"} {
		t.Run(typ, func(t *testing.T) {
			pf.RequireMapType(t, typ)
			dir := t.TempDir()
			w := &postmap.Writer{Dir: dir, Type: typ, Postmap: pf.Postmap, ConfigDir: pf.ConfigDir}
			s, err := w.Stream(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			// Backwards, in chunks of several lines.
			for i := len(lines); i > 0; i -= 7 {
				s.Put([]byte(strings.Join(lines[max(i-7, 0):i], "\n") + "\n"))
			}
			p, err := s.Finish(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(p); err != nil {
				t.Fatal(err)
			}
			if got := pf.Query(t, typ+":"+filepath.Join(dir, "a"), slices.Collect(maps.Keys(want))...); !maps.Equal(got, want) {
				t.Fatalf("database: %d of %d entries as the source has them", len(got), len(want))
			}
			if got, err := os.ReadFile(filepath.Join(dir, "a")); err != nil || string(got) != string(src) {
				t.Fatalf("source: %v", err)
			}
			st, err := os.Stat(filepath.Join(dir, "a"))
			if err != nil {
				t.Fatal(err)
			}
			db, err := os.Stat(filepath.Join(dir, "a"+postmap.Suffixes[typ]))
			if err != nil {
				t.Fatal(err)
			}
			if db.ModTime().Truncate(time.Second).Before(st.ModTime().Truncate(time.Second)) {
				t.Errorf("database %v older than source %v", db.ModTime(), st.ModTime())
			}
			if tmps, _ := filepath.Glob(filepath.Join(dir, ".*")); len(tmps) != 0 {
				t.Fatalf("temp files left: %v", tmps)
			}
		})
	}
	dir := t.TempDir()
	bad := &postmap.Writer{Dir: dir, Type: "hash", Postmap: "/bin/false", ConfigDir: pf.ConfigDir}
	s, err := bad.Stream(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	s.Put([]byte("x@example.org y@example.org\n"))
	if _, err := s.Finish([]byte("x@example.org y@example.org\n")); err == nil {
		t.Fatal("a stream with a failing postmap finished")
	}
	w := &postmap.Writer{Dir: dir, Type: "hash", Postmap: pf.Postmap, ConfigDir: pf.ConfigDir}
	if s, err = w.Stream(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	s.Put([]byte("x@example.org y@example.org\n"))
	s.Abort()
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*")); len(tmps) != 0 {
		t.Fatalf("temp files left: %v", tmps)
	}
}
