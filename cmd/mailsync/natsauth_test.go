package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"mailsync/internal/testenv"
	"mailsync/stream"
)

// listeningTCP returns the TCP ports process pid listens on: its socket
// fds matched against the kernel's tables of listening sockets.
func listeningTCP(t *testing.T, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var ports []string
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// local_address st ... inode
			if len(fields) > 9 && fields[3] == "0A" && inodes[fields[9]] {
				ports = append(ports, table+" "+fields[1])
			}
		}
		f.Close()
	}
	return ports
}

// TestEmbeddedNATSNoNetwork runs the daemon with its embedded NATS and
// shows: no TCP listener at all; the command line reaches it through a
// socket in a 0700 dir of the state dir and works as root; a connection
// there without a key is refused, and one with the worker's key cannot
// publish an event; another user can neither read the keys nor connect.
func TestEmbeddedNATSNoNetwork(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	cfg := writeConfig(t, ldap, "metrics:\n  listen: \"off\"\n")
	bin := testenv.BuildRelease(t)
	var out testenv.LogBuffer
	cmd := exec.Command(bin, "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	bus := adminBus(t, cfg)
	testenv.Eventually(t, 20*time.Second, func() error {
		if n := msgs(bus); n != 1 {
			return fmt.Errorf("%d events, want alice's", n)
		}
		return nil
	})
	if ports := listeningTCP(t, cmd.Process.Pid); len(ports) != 0 {
		t.Errorf("the daemon listens on TCP: %v", ports)
	}

	c, _ := loadConfig(cfg)
	sock := filepath.Join(c.StateDir, natsSockPath)
	for path, want := range map[string]os.FileMode{filepath.Dir(sock): 0o700 | os.ModeDir, sock: 0o600 | os.ModeSocket,
		filepath.Join(c.StateDir, natsAuthDir):              0o700 | os.ModeDir,
		filepath.Join(c.StateDir, natsAuthDir, "worker.nk"): 0o600} {
		if st, err := os.Stat(path); err != nil || st.Mode()&(os.ModeType|os.ModePerm) != want {
			t.Errorf("%s: %v, want mode %v", path, err, want)
		}
	}
	if o, e, code := verb(t, cfg, "status"); code != 0 || !strings.Contains(o, "stream MAILSYNC") {
		t.Errorf("mailsync status as root: exit %d\n%s%s", code, o, e)
	}

	if nc, err := nats.Connect("nats://embedded", stream.DialLocal(sock)); err == nil {
		nc.Close()
		t.Errorf("the socket accepted a connection without a key")
	}
	creds, err := stream.LoadCredentials(filepath.Join(c.StateDir, natsAuthDir))
	if err != nil {
		t.Fatal(err)
	}
	wnc, err := nats.Connect("nats://embedded", stream.DialLocal(sock), creds.NkeyAuth(stream.RoleWorker))
	if err != nil {
		t.Fatalf("worker key through the socket: %v", err)
	}
	defer wnc.Close()
	wnc.Publish("mailsync.user.forged", []byte(`{"v":1,"op":"modify","kind":"user","uuid":"forged"}`))
	wnc.Flush()
	time.Sleep(200 * time.Millisecond)
	if n := msgs(bus); n != 1 {
		t.Errorf("%d events after the worker's forged publish, want 1", n)
	}

	// Another user: the config readable, the keys and socket not.
	pub := filepath.Join(t.TempDir(), "mailsync.yaml")
	data, _ := os.ReadFile(cfg)
	os.WriteFile(pub, data, 0o644)
	os.Chmod(filepath.Dir(pub), 0o755)
	o, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "status", "-c", pub).CombinedOutput()
	if err == nil || !strings.Contains(string(o), "permission denied") {
		t.Errorf("mailsync status as nobody: %v\n%s", err, o)
	}
}

func msgs(bus *stream.Bus) uint64 {
	info, err := bus.Stream.Info(context.Background())
	if err != nil {
		return 0
	}
	return info.State.Msgs
}

// TestEmbeddedNATSListenNeedsTLSAndKeys: an embedded server that must listen
// (other hosts' daemons) is refused without TLS; with it, it accepts TLS
// connections with a generated key only, and a second mail host's daemon
// running as a worker with the generated worker key follows the directory
// (its consumers, acks and bucket reads are all a worker needs).
func TestEmbeddedNATSListenNeedsTLSAndKeys(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	ca := testenv.NewCA(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))

	cfg := writeConfig(t, ldap, "nats:\n  listen: "+addr+"\n")
	if _, e, code := verb(t, cfg, "run"); code != 2 || !strings.Contains(e, "nats.tls_cert_file") {
		t.Fatalf("nats.listen without TLS: exit %d, %s", code, e)
	}

	cfg = writeConfig(t, ldap, "nats:\n  listen: "+addr+"\n  tls_cert_file: "+ca.ServerCert+"\n  tls_key_file: "+ca.ServerKey+"\n")
	startDaemon(t, cfg)
	if err := testenv.WaitTCP(addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	c, _ := loadConfig(cfg)
	workerSeed := filepath.Join(c.StateDir, natsAuthDir, "worker.nk")
	seedOpt, err := nats.NkeyOptionFromSeed(workerSeed)
	if err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string][]nats.Option{
		"plain text": {seedOpt},
		"no key":     {nats.RootCAs(ca.CertFile)},
	} {
		url := "tls://" + addr
		if name == "plain text" {
			url = "nats://" + addr
		}
		if nc, err := nats.Connect(url, append(opts, nats.Timeout(2*time.Second))...); err == nil {
			nc.Close()
			t.Errorf("connection with %s accepted", name)
		}
	}

	// mx2: a worker-only mail host against this host's embedded server.
	cfg2 := writeConfig(t, ldap, "host: mx2.example.org\nlistener:\n  enabled: false\n"+
		"nats:\n  url: tls://"+addr+"\n  ca_file: "+ca.CertFile+"\n  nkey_seed_file: "+workerSeed+"\n")
	startDaemon(t, cfg2)
	ldap.AddUser(t, "bob", "bob@example.org", nil)
	c2, _ := loadConfig(cfg2)
	testenv.Eventually(t, 30*time.Second, func() error {
		data, err := os.ReadFile(filepath.Join(c2.Postfix.MapDir, "virtual_mailbox"))
		if err != nil || !strings.Contains(string(data), "bob@example.org") {
			return fmt.Errorf("mx2's mailbox map lacks bob: %v", err)
		}
		return nil
	})
}
