package mailconf_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"mailsync/mailconf"
)

// checkGolden compares rendered files with testdata/<name>.golden; -update
// rewrites it.
func checkGolden(t *testing.T, name string, files []mailconf.File) {
	t.Helper()
	var b bytes.Buffer
	for _, f := range files {
		fmt.Fprintf(&b, "=== %s (%o)\n%s", f.Path, f.Mode, f.Data)
	}
	golden := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("rendered files differ from %s (run with -update and review the diff):\n%s", golden, b.String())
	}
}
