package aliases

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// The tables of the benchmarks' directory (bigDir), as digests, both as
// Tables computes them and as Load writes them, and the databases Load
// builds hold what the sources do: a change to how the full build
// computes, renders or writes the tables must leave them byte for byte as
// they are.
func TestBigDirTablesDigest(t *testing.T) {
	want := map[string]string{
		AliasMap:   "161066bbdff7d5c007564c8fccd57aed9779441429da349fdf0f6f59508e5589 24311016",
		MailboxMap: "507be23b76de013ec3cf853410b7094f3fae4ac351363942f9bfacaabf868c10 4000000",
		DomainMap:  "b2f71feab5acd2502cd48e858bb94fa3a4d2ea088a4734e34e4889f1dda3f84e 24",
	}
	digest := func(b []byte) string { return fmt.Sprintf("%x %d", sha256.Sum256(b), len(b)) }
	entries := bigDir().all()
	tables := Tables("", DefaultExpansionLimit, entries)
	f := newFixture(t, nil, nil)
	f.load(t, entries)
	for name, w := range want {
		if got := digest(tables[name]); got != w {
			t.Errorf("Tables: %s: sha256 and size %s, want %s", name, got, w)
		}
		src, err := os.ReadFile(filepath.Join(f.cfg.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := digest(src); got != w {
			t.Errorf("Load: %s: sha256 and size %s, want %s", name, got, w)
		}
		// And the database holds what the source does.
		db, err := dumpTable(f.pf, f.table(name))
		if err != nil {
			t.Fatal(err)
		}
		if want := sourceLines(src); !eq(db, want) {
			t.Errorf("Load: %s: the database holds %d entries, the source %d lines", name, len(db), len(want))
		}
	}
}
