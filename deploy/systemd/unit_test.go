// Package systemd holds mailsync's systemd unit; its test checks the unit
// with systemd's own analyzer, as an administrator installing it would.
package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"mailsync/internal/testenv"
)

func TestUnitVerifiesAndIsHardened(t *testing.T) {
	analyze := testenv.Require(t, "systemd-analyze", "systemd")
	data, err := os.ReadFile("mailsync.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	for _, want := range []string{"Type=notify", "WatchdogSec=", "RestartPreventExitStatus=2", "NoNewPrivileges=yes",
		"ProtectSystem=strict", "ReadWritePaths=", "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet="} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %s", want)
		}
	}
	// verify wants ExecStart to exist: point it at a real executable.
	dir := t.TempDir()
	p := filepath.Join(dir, "mailsync.service")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(unit, "/usr/local/bin/mailsync", "/bin/true")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", p).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(analyze, "security", "--offline=true", p).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for mailsync.service: ([0-9.]+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no exposure score in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security exposure: %.1f (0 = locked down, 10 = unprotected)", score)
	if score > 3.0 {
		t.Errorf("exposure %.1f, want at most 3.0", score)
	}
}
