package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/internal/testenv"
)

// TestReleaseHasNoTestHooks builds mailsync as `make build` does and with
// the test hooks tag. The release binary holds no trace of the crash hook
// (not even the variable's name, so it cannot read it) and starts its
// mailbox handler with MAILSYNC_TEST_CRASH_AT set as if it were not; the
// tagged binary arms the hook.
func TestReleaseHasNoTestHooks(t *testing.T) {
	release, tagged := testenv.BuildRelease(t), testenv.BuildMailsync(t)
	for bin, want := range map[string]bool{release: false, tagged: true} {
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if got := bytes.Contains(data, []byte("MAILSYNC_TEST_")); got != want {
			t.Errorf("%s: holds MAILSYNC_TEST_ = %v, want %v", bin, got, want)
		}
	}

	ldap := testenv.StartSlapd(t)
	c := testenv.NewMailsyncConfig(t, "").Handlers("mailbox").Slapd(ldap)
	cfg := c.Set("dovecot.doveadm_url", fmt.Sprintf("http://127.0.0.1:%d/doveadm/v1", testenv.FreePort(t))).
		Set("dovecot.api_key_file", c.Secret("api.key", "k")).
		Set("dovecot.mail_home", c.Dir()+"/mail/%Ld/%Ln").
		Write("")

	armed := func(bin string) bool {
		t.Helper()
		var out testenv.LogBuffer
		cmd := exec.Command(bin, "run", "-c", cfg)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = append(os.Environ(), "MAILSYNC_TEST_CRASH_AT=move:intent")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}()
		// "mailsync running" is logged once the handlers are built,
		// after any hook they were given.
		testenv.Eventually(t, 20*time.Second, func() error {
			if !strings.Contains(out.String(), "mailsync running") {
				return fmt.Errorf("not running yet:\n%s", out.String())
			}
			return nil
		})
		return strings.Contains(out.String(), "kills itself")
	}
	if armed(release) {
		t.Errorf("the release binary arms MAILSYNC_TEST_CRASH_AT")
	}
	if !armed(tagged) {
		t.Errorf("the binary built with -tags %s does not arm MAILSYNC_TEST_CRASH_AT", testenv.TestHooksTag)
	}
}
