package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"mailsync/internal/testenv"
)

// TestMetricsOffLoopbackRefused: the daemon refuses to serve /metrics on an
// address other hosts reach, naming the key, and serves it there once
// metrics.allow_remote says so.
func TestMetricsOffLoopbackRefused(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	port := testenv.FreePort(t)
	cfg := writeConfig(t, ldap, fmt.Sprintf("metrics:\n  listen: 0.0.0.0:%d\n", port))
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"run", "-c", cfg}, &bytes.Buffer{}, &stderr)
	if code := exitCode(err, &stderr); code != 2 {
		t.Fatalf("exit code %d for metrics.listen 0.0.0.0, want 2 (%v)", code, err)
	}
	if !strings.Contains(stderr.String(), "metrics.listen") || !strings.Contains(stderr.String(), "metrics.allow_remote") {
		t.Errorf("error does not name metrics.listen and metrics.allow_remote: %s", stderr.String())
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Errorf("something listens on the refused metrics port")
	}

	cfg = writeConfig(t, ldap, fmt.Sprintf("metrics:\n  listen: 0.0.0.0:%d\n  allow_remote: true\n", port))
	ctx, cancel := context.WithCancel(context.Background())
	var log testenv.LogBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "-c", cfg}, &bytes.Buffer{}, &log) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 20*time.Second, func() error {
		_, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		return err
	})
}
