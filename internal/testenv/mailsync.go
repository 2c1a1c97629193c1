package testenv

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestHooksTag is the build tag that compiles mailsync's test hooks
// (MAILSYNC_TEST_CRASH_AT) into the binary; `make build` leaves it out.
const TestHooksTag = "mailsync_testhooks"

// BuildMailsync builds the mailsync binary with its test hooks
// (TestHooksTag) into a temp dir and returns its path.
func BuildMailsync(t testing.TB) string {
	t.Helper()
	return buildMailsync(t, "-tags", TestHooksTag)
}

// BuildRelease builds mailsync as `make build` does: without test hooks.
func BuildRelease(t testing.TB) string {
	t.Helper()
	return buildMailsync(t)
}

func buildMailsync(t testing.TB, flags ...string) string {
	t.Helper()
	Integration(t, "the mailsync binary")
	bin := filepath.Join(t.TempDir(), "mailsync")
	goBin, err := GoTool()
	if err != nil {
		t.Fatalf("build mailsync: %v", err)
	}
	args := append(append([]string{"build"}, flags...), "-o", bin, "mailsync/cmd/mailsync")
	out, err := exec.Command(goBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("build mailsync: %v\n%s", err, out)
	}
	return bin
}
