package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// TestStopFinishesHandlerCall stops the daemon with SIGTERM while the
// aliases handler's call for a new user is under way (its postmap held by
// a wrapper until the test lets it go). The daemon must stop its listener
// first and then let the call finish: the runner's context is not the
// call's, so postmap is not killed, the map gets the user, the event is
// acked, and the daemon exits 0 only after that. Were the call given the
// runner's cancelled context, postmap would be killed with it, the map
// would lack the user and the event would stay unacked.
func TestStopFinishesHandlerCall(t *testing.T) {
	t.Parallel()
	bin := testenv.BuildRelease(t)
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	pf := testenv.StartPostfix(t)
	c := testenv.NewMailsyncConfig(t, "").Handlers("aliases").Slapd(ldap).Postfix(pf, "")
	dir := c.Dir()
	slow, started, release := filepath.Join(dir, "slow"), filepath.Join(dir, "started"), filepath.Join(dir, "release")
	// The first postmap run after slow appears waits (up to 60s) for
	// release; every other run is postmap itself.
	wrapper := filepath.Join(dir, "postmap-held")
	script := "#!/bin/sh\nif rm " + slow + " 2>/dev/null; then\n  touch " + started + "\n  i=0\n" +
		"  while [ ! -e " + release + " ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\nfi\nexec " + pf.Postmap + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := c.Set("postfix.postmap", wrapper).Write("")

	var out testenv.LogBuffer
	cmd := exec.Command(bin, "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	t.Cleanup(func() {
		if !exited {
			cmd.Process.Kill()
			<-done
		}
	})
	running := func() {
		t.Helper()
		select {
		case err := <-done:
			exited = true
			t.Fatalf("the daemon ended early: %v\n%s", err, out.String())
		default:
		}
	}
	mapHas := func(addr string) bool {
		data, err := os.ReadFile(filepath.Join(dir, "maps", "virtual_mailbox"))
		return err == nil && strings.Contains(string(data), addr)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		running()
		if !mapHas("alice@example.org") {
			return errors.New("the daemon has not written alice's mailbox map yet")
		}
		return nil
	})

	// bob's change reaches the handler, whose postmap is held.
	if err := os.WriteFile(slow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ldap.AddUser(t, "bob", "bob@example.org", nil)
	testenv.Eventually(t, 30*time.Second, func() error {
		running()
		if _, err := os.Stat(started); err != nil {
			return errors.New("the handler's postmap for bob has not started yet")
		}
		return nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The listener stops at once; the daemon waits for the call.
	testenv.Eventually(t, 15*time.Second, func() error {
		running()
		if !strings.Contains(out.String(), `"listener stopped"`) {
			return errors.New("the listener has not stopped yet")
		}
		return nil
	})
	time.Sleep(time.Second)
	running()
	if strings.Contains(out.String(), `"runner stopped"`) || mapHas("bob@example.org") {
		t.Fatalf("the runner stopped or the map changed while its postmap was held:\n%s", out.String())
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-done:
		exited = true
	case <-time.After(30 * time.Second):
		t.Fatalf("the daemon still runs 30s after its handler call was let go:\n%s", out.String())
	}
	log := out.String()
	if err != nil {
		t.Fatalf("daemon stopped with SIGTERM: %v, want exit status 0\n%s", err, log)
	}
	if l, r := strings.Index(log, `"listener stopped"`), strings.Index(log, `"runner stopped"`); l < 0 || r < l {
		t.Errorf("the log does not say the listener stopped before the runner:\n%s", log)
	}
	if !mapHas("bob@example.org") {
		t.Errorf("the handler call under way at the stop did not complete: bob is not in the map\n%s", log)
	}
	if strings.Contains(log, "handler failed") {
		t.Errorf("a handler call failed during the stop:\n%s", log)
	}
	// Acked: the aliases consumer has nothing pending or unacked and is
	// acked up to the stream's last event, as the daemon's store, opened
	// again here, says.
	conf, err := loadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bus, closeBus, err := openBus(context.Background(), conf, true)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus()
	var st strings.Builder
	if err := printStatus(context.Background(), &st, bus); err != nil {
		t.Fatal(err)
	}
	last := regexp.MustCompile(`last seq (\d+)`).FindStringSubmatch(st.String())
	cons := regexp.MustCompile(`aliases-\S+\s+0\s+0\s+(\d+)\s`).FindStringSubmatch(st.String())
	if last == nil || cons == nil || cons[1] != last[1] {
		t.Errorf("the aliases consumer is not acked up to the stream's last event:\n%s", st.String())
	}
}
