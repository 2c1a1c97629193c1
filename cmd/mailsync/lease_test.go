package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/internal/testenv"
	"mailsync/listener"
)

// TestRestartTakesOwnLease kills the daemon (SIGKILL: the lease stays
// behind) and starts it again on the same state dir: it takes its own lease
// back at once instead of waiting out the TTL. A second daemon on the same
// state dir is refused while the first runs.
func TestRestartTakesOwnLease(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	cfg := writeConfig(t, ldap, "metrics:\n  listen: \"off\"\n")
	bin := testenv.BuildRelease(t)

	start := func() (*exec.Cmd, *testenv.LogBuffer) {
		var out testenv.LogBuffer
		cmd := exec.Command(bin, "run", "-c", cfg)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd, &out
	}
	waitLog := func(out *testenv.LogBuffer, what string, within time.Duration) time.Duration {
		t.Helper()
		begin := time.Now()
		testenv.Eventually(t, within, func() error {
			if !strings.Contains(out.String(), what) {
				return fmt.Errorf("no %q in the log:\n%s", what, out.String())
			}
			return nil
		})
		return time.Since(begin)
	}

	first, out := start()
	waitLog(out, "listener lease taken", 20*time.Second)

	var stderr bytes.Buffer
	err := run(context.Background(), []string{"run", "-c", cfg}, &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(err.Error(), "in use by another mailsync") {
		t.Errorf("a second daemon on the same state dir: %v, want refused\n%s", err, stderr.String())
	}

	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	_, out = start()
	waitLog(out, "mailsync running", 20*time.Second)
	if d := waitLog(out, "listener lease taken", 20*time.Second); d > listener.DefaultLeaseTTL/2 {
		t.Errorf("the restarted daemon took its own lease %s after it ran (TTL %s)", d, listener.DefaultLeaseTTL)
	}
	if strings.Contains(out.String(), "expired") || strings.Contains(out.String(), "standby") {
		t.Errorf("the restarted daemon waited for its own lease:\n%s", out.String())
	}
}
