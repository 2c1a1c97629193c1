package mailbox_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/internal/testenv"
)

// TestSIGKILLDuringRename builds the real binary, runs `mailsync run` with
// only the mailbox handler, and has it SIGKILL itself (MAILSYNC_TEST_CRASH_AT)
// at each step of a rename with a separate index. Restarted without the
// variable, it completes the rename: the mail is in exactly one place and
// readable at the new address.
func TestSIGKILLDuringRename(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: host, SeparateIndex: true})
	e := &env{ldap: ldap, dc: dc}

	dir := t.TempDir()
	bin := testenv.BuildMailsync(t)
	cfg := testenv.NewMailsyncConfig(t, dir).Set("host", host).Handlers("mailbox").Slapd(ldap).Dovecot(dc).
		Set("dovecot.index_home", dc.IndexRoot+"/%Ld/%Ln").
		Policy("mail/dovecot/location/separate_index", "yes").
		Write("")

	steps := []string{"move:intent", "move:kicked", "move:home-renamed", "move:index-renamed", "move:marked", "move:flushed", "move:created"}
	dns := map[string]string{}
	for i := range steps {
		uid := fmt.Sprintf("k%d", i)
		dns[uid] = ldap.AddUser(t, uid, uid+"@example.org", nil)
	}
	logf, _ := os.Create(filepath.Join(dir, "mailsync.log"))
	defer logf.Close()
	start := func(crashAt string) *exec.Cmd {
		cmd := exec.Command(bin, "run", "-c", cfg)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Env = append(os.Environ(), "MAILSYNC_TEST_CRASH_AT="+crashAt)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	stop := func(cmd *exec.Cmd) {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("mailsync exit on SIGTERM: %v", err)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Errorf("mailsync did not stop on SIGTERM")
		}
	}
	logTail := func() string {
		data, _ := os.ReadFile(filepath.Join(dir, "mailsync.log"))
		lines := strings.Split(string(data), "\n")
		if len(lines) > 20 {
			lines = lines[len(lines)-20:]
		}
		return strings.Join(lines, "\n")
	}

	// First run: every user's mailbox is created; then mail arrives.
	cmd := start("")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mailsync log:\n%s", logTail())
		}
	})
	testenv.Eventually(t, 30*time.Second, func() error {
		for i := range steps {
			if !dirExists(filepath.Join(dc.Home(fmt.Sprintf("k%d@example.org", i)), "Maildir", ".Spam")) {
				return fmt.Errorf("k%d not created yet", i)
			}
		}
		return nil
	})
	stop(cmd)
	for i := range steps {
		e.fill(t, fmt.Sprintf("k%d@example.org", i))
	}

	for i, step := range steps {
		uid := fmt.Sprintf("k%d", i)
		oldAddr, newAddr := uid+"@example.org", uid+"new@example.org"
		cmd := start(step)
		ldap.Modify(t, dns[uid], map[string][]string{"mailPrimaryAddress": {newAddr}})
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("%s: mailsync ended with %v, want killed by SIGKILL\n%s", step, err, logTail())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%s: mailsync did not reach the step\n%s", step, logTail())
		}
		cmd = start("")
		testenv.Eventually(t, 30*time.Second, func() error {
			ents, _ := os.ReadDir(filepath.Join(dir, "state", "mailbox-intents"))
			if len(ents) > 0 {
				return fmt.Errorf("%d intent records left", len(ents))
			}
			if dirExists(dc.Home(oldAddr)) {
				return fmt.Errorf("old home still there")
			}
			if !dirExists(filepath.Join(dc.Home(newAddr), "Maildir", ".Spam")) {
				return fmt.Errorf("new mailbox not complete")
			}
			return nil
		})
		stop(cmd)
		if got := dc.MailboxSummary(t, newAddr); !sameFolders(got, filled) {
			t.Errorf("%s: %s over IMAP: %v, want %v", step, newAddr, got, filled)
		}
		if n := mailFiles(t, dc.Home(newAddr)); n != 4 {
			t.Errorf("%s: %d message files at the new home, want 4", step, n)
		}
		if dirExists(filepath.Join(dc.IndexRoot, "example.org", uid)) || !dirExists(filepath.Join(dc.IndexRoot, "example.org", uid+"new")) {
			t.Errorf("%s: index did not end up at the new path only", step)
		}
	}
	if t.Failed() {
		t.Logf("mailsync log:\n%s", logTail())
	}
}
