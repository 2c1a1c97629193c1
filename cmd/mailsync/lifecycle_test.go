package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/internal/testenv"
)

// TestFailingRunnerEndsDaemon runs the release binary with a handler that
// cannot do its work: the aliases handler's postmap fails, so its first
// load of the directory fails and the runner ends with the error. The
// daemon must not stay half alive (a listener publishing with nobody
// applying): it stops its listener, says why, and exits 1, which systemd
// restarts (the unit prevents a restart only on 2). Started again with a
// working postmap, the same state dir runs and writes the maps: the failed
// run left no lock or store behind.
func TestFailingRunnerEndsDaemon(t *testing.T) {
	t.Parallel()
	bin := testenv.BuildRelease(t)
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	pf := testenv.StartPostfix(t)
	c := testenv.NewMailsyncConfig(t, "").Handlers("aliases").Slapd(ldap).Postfix(pf, "")
	broken := filepath.Join(c.Dir(), "postmap-broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'postmap: fatal: cannot write the map' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// An upgraded config still naming a removed key: it loads, with a
	// warning naming the key.
	cfg := c.Set("postfix.postmap", broken).Merge("nats:\n  port: 4222\n").Write("broken.yaml")

	var out testenv.LogBuffer
	cmd := exec.Command(bin, "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
		t.Fatalf("the daemon still runs 60s after its runner failed:\n%s", out.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("daemon with a failing runner: %v, want exit status 1\n%s", err, out.String())
	}
	log := out.String()
	for _, want := range []string{"config: nats.port: no longer read", "mailsync running", `"stopping"`, "runner: ", "load directory into aliases", "cannot write the map"} {
		if !strings.Contains(log, want) {
			t.Errorf("the daemon's log lacks %q:\n%s", want, log)
		}
	}

	// The same state dir, postmap working: the daemon runs and the map has
	// alice.
	cfg = c.Set("postfix.postmap", pf.Postmap).Write("")
	var out2 testenv.LogBuffer
	cmd = exec.Command(bin, "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &out2, &out2
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done = make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
		}
	})
	testenv.Eventually(t, 30*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("the restarted daemon ended: %v\n%s", err, out2.String())
		default:
		}
		data, err := os.ReadFile(filepath.Join(c.Dir(), "maps", "virtual_mailbox"))
		if err != nil || !strings.Contains(string(data), "alice@example.org") {
			return errors.New("the restarted daemon has not written alice's mailbox map yet")
		}
		return nil
	})
}
