package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"mailsync/internal/testenv"
	"mailsync/stream"
)

// writeConfig writes a config following ldap with the aliases handler,
// extra (YAML) merged over it.
func writeConfig(t *testing.T, ldap *testenv.Slapd, extra string) string {
	t.Helper()
	return testenv.NewMailsyncConfig(t, "").Handlers("aliases").Slapd(ldap).Postfix(testenv.StartPostfix(t), "").
		Merge(extra).Write("")
}

func TestRunFollowsDirectoryAndStopsCleanly(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg := writeConfig(t, ldap, "metrics:\n  listen: "+metricsAddr+"\n")

	// systemd's notify socket, as the unit's Type=notify provides it.
	sock := filepath.Join(t.TempDir(), "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv("NOTIFY_SOCKET", sock)

	ctx, cancel := context.WithCancel(context.Background())
	var stderr testenv.LogBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "-c", cfg}, &bytes.Buffer{}, &stderr) }()
	t.Cleanup(cancel)

	bus := adminBus(t, cfg)
	ldap.AddUser(t, "bob", "bob@example.org", nil)
	testenv.Eventually(t, 10*time.Second, func() error {
		info, err := bus.Stream.Info(context.Background())
		if err != nil {
			return err
		}
		if info.State.Msgs != 2 {
			return fmt.Errorf("%d events in the stream, want 2", info.State.Msgs)
		}
		return nil
	})
	// READY=1 reached systemd.
	notify.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, _, err := notify.ReadFromUnix(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("no READY=1 on the notify socket: %q %v", buf[:n], err)
	}
	// /metrics counts the applied events; /healthz reports LDAP and NATS.
	// Events the first load of the directory covers are not applied one
	// by one; carol, added once bob is in the maps, comes after the load.
	mailboxMap := filepath.Join(filepath.Dir(cfg), "maps", "virtual_mailbox")
	testenv.Eventually(t, 10*time.Second, func() error {
		if b, err := os.ReadFile(mailboxMap); err != nil || !strings.Contains(string(b), "bob@example.org") {
			return fmt.Errorf("bob not in virtual_mailbox yet (%v)", err)
		}
		return nil
	})
	ldap.AddUser(t, "carol", "carol@example.org", nil)
	testenv.Eventually(t, 10*time.Second, func() error {
		body, err := httpGet("http://" + metricsAddr + "/metrics")
		if err != nil {
			return err
		}
		if !regexp.MustCompile(`mailsync_events_total\{handler="aliases",result="applied"\} [12]\n`).MatchString(body) {
			return fmt.Errorf("metrics lack carol's (and maybe bob's) applied aliases event")
		}
		if !regexp.MustCompile(`mailsync_map_rebuild_seconds_count\{map="virtual_alias"\} [1-9]`).MatchString(body) {
			return fmt.Errorf("metrics lack the alias map's rebuild time")
		}
		return nil
	})
	health, err := httpGet("http://" + metricsAddr + "/healthz")
	if err != nil || !strings.Contains(health, `"ldap":"ok"`) || !strings.Contains(health, `"nats":"ok"`) {
		t.Fatalf("healthz: %s %v", health, err)
	}
	ldap.Stop(t)
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, err := httpGet("http://" + metricsAddr + "/healthz"); err == nil {
			return fmt.Errorf("healthz still 200 with slapd down")
		}
		return nil
	})
	ldap.Start(t)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v on shutdown, want nil\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop within 15s of SIGTERM")
	}
	if strings.Contains(stderr.String(), ldap.AdminPW) {
		t.Errorf("the LDAP bind password appears in the log")
	}
}

// adminBus waits until the daemon of cfg serves the command line's socket
// and connects through it as the command line does (admin role).
func adminBus(t testing.TB, cfg string) *stream.Bus {
	t.Helper()
	c, err := loadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var bus *stream.Bus
	testenv.Eventually(t, 20*time.Second, func() error {
		b, closeBus, err := openBus(context.Background(), c, false)
		if err != nil {
			return err
		}
		t.Cleanup(closeBus)
		bus = b
		return nil
	})
	return bus
}

func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("%s: %s", resp.Status, b)
	}
	return string(b), nil
}

func TestConfigErrorExitsTwo(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.yaml")
	os.WriteFile(p, []byte("ldap:\n  url: http://nope\n"), 0o600)
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"run", "-c", p}, &bytes.Buffer{}, &stderr)
	if code := exitCode(err, &stderr); code != 2 {
		t.Fatalf("exit code %d, want 2 for a config error (%v)", code, err)
	}
	if !strings.Contains(stderr.String(), "ldap.url") {
		t.Errorf("error does not name the key: %s", stderr.String())
	}
}

func TestStatusAndDeadLetterVerbs(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	bad := ldap.AddUser(t, "odd", "odd@example.org", nil)
	cfg := writeConfig(t, ldap, "metrics:\n  listen: \"off\"\n")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testenv.LogBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "-c", cfg}, &bytes.Buffer{}, &stderr) }()
	t.Cleanup(func() { cancel(); <-done })

	verb := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(context.Background(), append(args, "-c", cfg), &out, &out); err != nil {
			t.Fatalf("mailsync %v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	adminBus(t, cfg)
	// A bad address arriving as a change (one present at start is
	// reported by the map rebuild instead).
	testenv.Eventually(t, 15*time.Second, func() error {
		if st := verb("status"); !regexp.MustCompile(`aliases-mail_example_org\s+0\s+0\s+1\s`).MatchString(st) {
			return fmt.Errorf("aliases not loaded and caught up yet:\n%s", st)
		}
		return nil
	})
	ldap.Modify(t, bad, map[string][]string{"mailAlternativeAddress": {"two@@example.org"}})
	var list string
	testenv.Eventually(t, 15*time.Second, func() error {
		list = verb("dead", "list")
		if !strings.Contains(list, bad) {
			return fmt.Errorf("dead list does not name %s:\n%s", bad, list)
		}
		return nil
	})
	status := verb("status")
	if !regexp.MustCompile(`aliases-mail_example_org\s+0\s+0\s+\d+\s+1`).MatchString(status) {
		t.Errorf("status does not show one dead letter for aliases:\n%s", status)
	}
	if !strings.Contains(status, "sync cookie stored") {
		t.Errorf("status lacks the cookie age:\n%s", status)
	}
	seq := regexp.MustCompile(`(?m)^(\d+)\s+aliases`).FindStringSubmatch(list)
	if seq == nil {
		t.Fatalf("no sequence in dead list:\n%s", list)
	}
	// A retry reaches the handler again: still broken, it is dead-lettered
	// anew under a new sequence number.
	verb("dead", "retry", seq[1])
	testenv.Eventually(t, 10*time.Second, func() error {
		l := verb("dead", "list")
		again := regexp.MustCompile(`(?m)^(\d+)\s+aliases`).FindStringSubmatch(l)
		if again == nil || again[1] == seq[1] || !strings.Contains(l, bad) {
			return fmt.Errorf("no new dead letter after the retry:\n%s", l)
		}
		return nil
	})
	// The operator fixes the entry; the change flows as usual.
	ldap.Modify(t, bad, map[string][]string{"mailAlternativeAddress": {"two@example.org"}})
	mapFile := filepath.Join(filepath.Dir(cfg), "maps", "virtual_alias")
	testenv.Eventually(t, 10*time.Second, func() error {
		data, err := os.ReadFile(mapFile)
		if err != nil {
			return err
		}
		if !strings.Contains(string(data), "two@example.org") {
			return fmt.Errorf("virtual_alias lacks the fixed address")
		}
		return nil
	})
	verb("dead", "drop", "--all")
	if l := verb("dead", "list"); strings.Contains(l, bad) {
		t.Errorf("dropped dead letter still listed:\n%s", l)
	}
	if strings.Contains(stderr.String(), "admin-secret") {
		t.Errorf("a secret appears in the log")
	}
}

// TestExternalNATSWithTLSAndCredentials runs mailsync against an external
// NATS server that requires TLS (throwaway CA) and an nkey or a password.
func TestExternalNATSWithTLSAndCredentials(t *testing.T) {
	ca := testenv.NewCA(t)
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "mailsync.nk")
	os.WriteFile(seedFile, seed, 0o600)
	os.WriteFile(filepath.Join(dir, "nats.secret"), []byte("nats-pass-123\n"), 0o600)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		TLSConfig: ca.ServerTLS(t), TLS: true, NoSigs: true, NoLog: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub}},
		Users: []*server.User{{Username: "mailsync", Password: "nats-pass-123"}}})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	url := fmt.Sprintf("tls://127.0.0.1:%d", ns.Addr().(*net.TCPAddr).Port)
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "nora", "nora@example.org", nil)

	for _, auth := range []string{
		"  nkey_seed_file: " + seedFile + "\n",
		"  user: mailsync\n  password_file: " + filepath.Join(dir, "nats.secret") + "\n",
	} {
		cfg := writeConfig(t, ldap, "nats:\n  url: "+url+"\n  ca_file: "+ca.CertFile+"\n"+auth)
		var out testenv.LogBuffer
		if err := run(context.Background(), []string{"status", "-c", cfg}, &out, &out); err != nil {
			t.Fatalf("status over TLS with %q: %v\n%s", auth, err, out.String())
		}
		if !strings.Contains(out.String(), "stream MAILSYNC") {
			t.Errorf("status output: %s", out.String())
		}
	}
	// Without the CA the server is not trusted; without credentials refused.
	for name, body := range map[string]string{
		"no CA":          "  url: " + url + "\n  nkey_seed_file: " + seedFile + "\n",
		"no credentials": "  url: " + url + "\n  ca_file: " + ca.CertFile + "\n",
	} {
		cfg := writeConfig(t, ldap, "nats:\n"+body)
		var out testenv.LogBuffer
		if err := run(context.Background(), []string{"status", "-c", cfg}, &out, &out); err == nil {
			t.Errorf("status with %s succeeded", name)
		}
		if strings.Contains(out.String(), string(seed)) || strings.Contains(out.String(), "nats-pass-123") {
			t.Errorf("a secret appears in the output: %s", out.String())
		}
	}
}

// TestHelpExitsZero: asking for help is not a usage error; a missing or
// unknown command still is.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"run", "--help"}, {"dead", "list", "--help"}, {"attic", "--help"}} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, &out, &errOut)
		if code := exitCode(err, &errOut); code != 0 {
			t.Errorf("mailsync %v: exit %d, want 0\n%s", args, code, errOut.String())
		}
		if !strings.Contains(out.String(), "Usage: mailsync") {
			t.Errorf("mailsync %v printed no usage:\n%s", args, out.String())
		}
	}
	for _, args := range [][]string{{}, {"bogus"}} {
		var out, errOut bytes.Buffer
		if code := exitCode(run(context.Background(), args, &out, &errOut), &errOut); code != 2 {
			t.Errorf("mailsync %v: exit %d, want 2", args, code)
		}
	}
}
