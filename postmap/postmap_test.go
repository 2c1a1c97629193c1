package postmap_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"mailsync/internal/testenv"
	"mailsync/postmap"
)

func TestInstallAtomicDeltaAndFailure(t *testing.T) {
	ctx := context.Background()
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	w := postmap.Writer{Dir: dir, Type: "hash", Postmap: pf.Postmap, ConfigDir: pf.ConfigDir}
	if err := w.Install(ctx, postmap.Table{Name: "a", Src: []byte("x@example.org y@example.org\n")},
		postmap.Table{Name: "b", Src: []byte("k v\n")}); err != nil {
		t.Fatal(err)
	}
	table := "hash:" + filepath.Join(dir, "a")
	if got := pf.Query(t, table, "x@example.org")["x@example.org"]; got != "y@example.org" {
		t.Fatalf("lookup after install: %q", got)
	}
	// A delta updates the live table in place.
	w.IncrementalMin = 0
	src := []byte("x@example.org z@example.org\nn@example.org m@example.org\n" + fill(20))
	if err := w.Install(ctx, postmap.Table{Name: "a", Src: src,
		Delta: &postmap.Delta{Put: []string{"x@example.org z@example.org", "n@example.org m@example.org"}}}); err != nil {
		t.Fatal(err)
	}
	r := pf.Query(t, table, "x@example.org", "n@example.org")
	if r["x@example.org"] != "z@example.org" || r["n@example.org"] != "m@example.org" {
		t.Fatalf("lookup after delta: %v", r)
	}
	// A failing postmap leaves the live table as it was and no temp files.
	bad := postmap.Writer{Dir: dir, Type: "hash", Postmap: "/bin/false", ConfigDir: pf.ConfigDir}
	if err := bad.Install(ctx, postmap.Table{Name: "a", Src: []byte("x@example.org broken@example.org\n")}); err == nil {
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

// Changes to a table the Writer installed are made in place: the same
// files (no rename), the changed keys' old lines blanked to comments and
// the new ones appended, and the live database equal, entry for entry, to
// what postmap builds from the source as it is on disk. Once blanked lines
// would outweigh live ones, the table is written whole again.
func TestUpdateInPlace(t *testing.T) {
	ctx := context.Background()
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	w := &postmap.Writer{Dir: dir, Type: "hash", Postmap: pf.Postmap, ConfigDir: pf.ConfigDir, CompactMin: -1}
	const n = 200
	lines := map[string]string{}
	render := func() []byte { return sortedSource(lines) }
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("k%03d@example.org", i)
		lines[k] = k + " v0@example.org"
	}
	if err := w.Install(ctx, postmap.Table{Name: "t", Src: render()}); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "t")
	inode := func(p string) uint64 {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	srcIno, dbIno := inode(src), inode(src+".db")
	r := rand.New(rand.NewPCG(1, 1))
	rewritten := false
	for step := 1; step <= 60; step++ {
		touched := map[string]bool{}
		for j := 0; j < 5; j++ {
			k := fmt.Sprintf("k%03d@example.org", r.IntN(n+20))
			touched[k] = true
			if _, ok := lines[k]; ok && r.IntN(3) == 0 {
				delete(lines, k)
				continue
			}
			lines[k] = fmt.Sprintf("%s v%d@example.org,w%d@example.org", k, step, j)
		}
		var d postmap.Delta
		for k := range touched {
			if l, ok := lines[k]; ok {
				d.Put = append(d.Put, l)
			} else {
				d.Del = append(d.Del, k)
			}
		}
		if err := w.Install(ctx, postmap.Table{Name: "t", Source: render, Delta: &d}); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		for k, l := range lines {
			want[k] = strings.TrimPrefix(l, k+" ")
		}
		if got := dump(t, pf, "hash:"+src); !maps.Equal(got, want) {
			t.Fatalf("step %d: live database differs from the table (%d entries, want %d)", step, len(got), len(want))
		}
		// The source on disk builds the same database.
		rebuilt := filepath.Join(t.TempDir(), "t")
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(rebuilt, data, 0o644)
		if out, err := exec.Command(pf.Postmap, "-c", pf.ConfigDir, "hash:"+rebuilt).CombinedOutput(); err != nil {
			t.Fatalf("postmap of the source: %v %s", err, out)
		}
		if got := dump(t, pf, "hash:"+rebuilt); !maps.Equal(got, want) {
			t.Fatalf("step %d: source on disk differs from the table", step)
		}
		if inode(src) != srcIno || inode(src+".db") != dbIno {
			rewritten = true
			if !bytes.Equal(data, render()) {
				t.Fatalf("step %d: the whole write is not the compact source", step)
			}
			srcIno, dbIno = inode(src), inode(src+".db")
		} else if !bytes.Contains(data, []byte("\n#")) {
			t.Fatalf("step %d: changed in place without a blanked line", step)
		}
	}
	if !rewritten {
		t.Errorf("the source was never compacted")
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*")); len(tmps) != 0 {
		t.Fatalf("temp files left: %v", tmps)
	}
}

// A change of few lines that are most of the table's bytes (a burst that
// reaches most groups) is written whole, not in place; the same number of
// short lines is made in place. Either way the live table holds it.
func TestLargeChangeWrittenWhole(t *testing.T) {
	ctx := context.Background()
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	w := &postmap.Writer{Dir: dir, Type: "hash", Postmap: pf.Postmap, ConfigDir: pf.ConfigDir}
	const n = 400
	lines := map[string]string{}
	render := func() []byte { return sortedSource(lines) }
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("k%03d@example.org", i)
		lines[k] = k + " v0@example.org"
	}
	if err := w.Install(ctx, postmap.Table{Name: "t", Src: render()}); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "t")
	inode := func() uint64 {
		st, err := os.Stat(src + ".db")
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	for _, c := range []struct {
		values int // addresses each changed line gets
		whole  bool
	}{{2, false}, {300, true}, {2, false}} {
		before := inode()
		var d postmap.Delta
		for i := 0; i < n/10; i++ { // a tenth of the lines: few enough in count
			k := fmt.Sprintf("k%03d@example.org", i)
			var vals []string
			for j := 0; j < c.values; j++ {
				vals = append(vals, fmt.Sprintf("m%03d@example.org", j))
			}
			lines[k] = k + " " + strings.Join(vals, ",")
			d.Put = append(d.Put, lines[k])
		}
		if err := w.Install(ctx, postmap.Table{Name: "t", Source: render, Delta: &d}); err != nil {
			t.Fatal(err)
		}
		if whole := inode() != before; whole != c.whole {
			t.Errorf("%d lines of %d addresses against %d lines: written whole %v, want %v", len(d.Put), c.values, n, whole, c.whole)
		}
		want := map[string]string{}
		for k, l := range lines {
			want[k] = strings.TrimPrefix(l, k+" ")
		}
		if got := dump(t, pf, "hash:"+src); !maps.Equal(got, want) {
			t.Fatalf("%d addresses a line: live database differs from the table", c.values)
		}
	}
}

func dump(t *testing.T, pf *testenv.Postfix, table string) map[string]string {
	t.Helper()
	out, err := exec.Command(pf.Postmap, "-c", pf.ConfigDir, "-s", table).Output()
	if err != nil {
		t.Fatalf("postmap -s %s: %v", table, err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(l, "\t"); ok {
			m[k] = v
		}
	}
	return m
}

// sortedSource is a table's source holding lines' values, sorted by key.
func sortedSource(lines map[string]string) []byte {
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(lines)) {
		b = append(append(b, lines[k]...), '\n')
	}
	return b
}
