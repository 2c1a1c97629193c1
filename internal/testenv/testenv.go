// Package testenv starts the real servers mailsync's tests run against —
// OpenLDAP slapd with syncprov and the UCS mail schema, Dovecot with an LDAP
// userdb, an embedded NATS JetStream server or a cluster of nats-server
// processes, Postfix's postmap — each in a temp dir on 127.0.0.1, stopped by
// t.Cleanup. A missing server binary fails the test with the apt-get line
// that installs it; nothing is skipped.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Require returns the absolute path of bin, or fails the test naming the
// Debian package that provides it.
func Require(t testing.TB, bin, pkg string) string {
	t.Helper()
	Integration(t, bin)
	if p, err := exec.LookPath(bin); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/usr/lib/dovecot"} {
		p := dir + "/" + bin
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	t.Fatalf("%s not found: install it with `apt-get install -y %s` (or run `make test`, which installs it)", bin, pkg)
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that no earlier call in this test binary returned: the kernel may hand out
// a just-closed port again, and one server's config asking for the same port
// twice fails to start ("duplicate listener").
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return port
		}
	}
	t.Fatalf("find a free port: 100 tries all met ports handed out before")
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// WaitTCP waits until addr accepts connections or the timeout passes.
func WaitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not reachable after %s: %w", addr, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Eventually polls cond every 20 ms until it returns nil or timeout passes,
// then fails the test with the last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitFile waits until path exists or the timeout passes.
func WaitFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := os.Stat(path)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not there after %s: %w", path, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// GoTool is the go command the tests build helper binaries with: the one
// on PATH (make puts /usr/local/go/bin there), else Debian's Go location.
func GoTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	const fallback = "/usr/local/go/bin/go"
	if _, err := os.Stat(fallback); err != nil {
		return "", fmt.Errorf("no go command on PATH or at %s: %w", fallback, err)
	}
	return fallback, nil
}

// Integration marks a test that needs a real server or the built binary.
// `go test -short` (make test-short, the fast tier: decisions, plans,
// model, validation, rendering) skips it, saying what it needs; every
// other run, make test included, requires it and fails when it is missing.
func Integration(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("needs %s: an integration test, run without -short", what)
	}
}
