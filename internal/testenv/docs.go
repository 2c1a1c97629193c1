package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// DocsBlock returns the code block of the repository's docs/operations.md
// whose first line(s) are first, so a test runs the configuration the
// docs give instead of a copy that could drift from them.
func DocsBlock(t testing.TB, first string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.Index(s, "\n"+first+"\n")
	if i < 0 {
		t.Fatalf("docs/operations.md has no block starting %q", first)
	}
	s = s[i+1:]
	return s[:strings.Index(s, "```")]
}

// TailFile is the last n lines of the file at path ("" if unreadable).
func TailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
