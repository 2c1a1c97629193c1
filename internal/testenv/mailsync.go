package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// BuildMailsync builds the mailsync binary into a temp dir and returns its
// path; MAILSYNC_BIN, when set, names a binary to use instead.
func BuildMailsync(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("MAILSYNC_BIN"); p != "" {
		return p
	}
	bin := filepath.Join(t.TempDir(), "mailsync")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, "build", "-o", bin, "mailsync/cmd/mailsync").CombinedOutput()
	if err != nil {
		t.Fatalf("build mailsync: %v\n%s", err, out)
	}
	return bin
}
