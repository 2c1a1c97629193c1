package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailsync/internal/testenv"
	"mailsync/mailconf"
)

// mailsync configure for Dovecot against a running test Dovecot: a dry run
// writes nothing, configure installs and reloads, check reports a hand
// edit as drift, and bad limits are refused naming the variable with
// nothing written.
func TestConfigureDovecot(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: mailHost})
	dropIn := filepath.Join(t.TempDir(), "dovecot.service.d", "mailsync-limits.conf")
	writeCfg := func(policy string) string {
		cfg, _ := verbConfig(t, ldap, dc, []string{"mailbox"},
			"configure: [dovecot]\npolicy:\n"+policy+
				"dovecot:\n  conf_dir: "+dc.ConfDir+"\n  unit_dropin: "+dropIn+"\n  index_home: "+dc.IndexRoot+"/%Ld/%Ln\n")
		return cfg
	}
	cfg := writeCfg(`  mail/dovecot/limits/default_client_limit: "1000"
  mail/dovecot/limits/default_process_limit: "1000"
  mail/dovecot/location/separate_index: "yes"
  mail/dovecot/process/mmap_disable: "yes"
`)
	limits := filepath.Join(dc.ConfDir, "conf.d", mailconf.DovecotLimitsFile)
	mail := filepath.Join(dc.ConfDir, "conf.d", mailconf.DovecotMailFile)
	reloads := func() int {
		data, _ := os.ReadFile(dc.LogPath)
		return strings.Count(string(data), "reloading configuration")
	}

	out, errOut, code := verb(t, cfg, "configure", "--dry-run")
	if code != 0 || !strings.Contains(out, "+++ "+limits) || !strings.Contains(out, "+  client_limit = 3000") || !strings.Contains(out, "+mmap_disable = yes") {
		t.Errorf("dry run: exit %d\n%s%s", code, out, errOut)
	}
	for _, p := range []string{limits, mail, dropIn} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("dry run wrote %s", p)
		}
	}

	before := reloads()
	out, errOut, code = verb(t, cfg, "configure")
	if code != 0 || !strings.Contains(out, "dovecot: wrote "+limits) || !strings.Contains(out, "dovecot-unit: wrote "+dropIn) {
		t.Fatalf("configure: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "restart") {
		t.Errorf("configure says nothing about the restart the fd limit needs:\n%s", errOut)
	}
	if reloads() == before {
		t.Errorf("configure did not reload the running Dovecot\n%s", dc.Log())
	}
	if data, _ := os.ReadFile(mail); !strings.Contains(string(data), "INDEX="+dc.IndexRoot+"/%Ld/%Ln") {
		t.Errorf("mail fragment:\n%s", data)
	}
	out, errOut, code = verb(t, cfg, "check")
	if code != 0 || !strings.Contains(out, "everything agrees") {
		t.Errorf("check after configure: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ := verb(t, cfg, "configure"); !strings.Contains(out, "dovecot: up to date") {
		t.Errorf("second configure:\n%s", out)
	}

	// A hand edit is drift; configure puts it back.
	if err := os.WriteFile(limits, []byte("default_process_limit = 5000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code = verb(t, cfg, "check")
	if code != 1 || !strings.Contains(out, "dovecot config drift") || !strings.Contains(out, limits) {
		t.Errorf("check after a hand edit: exit %d\n%s", code, out)
	}
	if _, errOut, code := verb(t, cfg, "configure"); code != 0 {
		t.Fatalf("configure: %d %s", code, errOut)
	}
	if _, _, code := verb(t, cfg, "check"); code != 0 {
		t.Errorf("check after configure repaired the edit: exit %d", code)
	}

	// Bad limits: exit 2 naming each variable; nothing written, no reload.
	installed := map[string][]byte{}
	for _, p := range []string{limits, mail, dropIn} {
		installed[p], _ = os.ReadFile(p)
	}
	before = reloads()
	bad := writeCfg(`  mail/dovecot/limits/default_process_limit: "many"
  mail/dovecot/limits/imap/process_limit: "-5"
`)
	_, errOut, code = verb(t, bad, "configure")
	if code != 2 || !strings.Contains(errOut, "mail/dovecot/limits/default_process_limit") || !strings.Contains(errOut, `"many"`) ||
		!strings.Contains(errOut, "mail/dovecot/limits/imap/process_limit") || !strings.Contains(errOut, `"-5"`) {
		t.Errorf("bad limits: exit %d, want 2 naming both variables:\n%s", code, errOut)
	}
	for p, want := range installed {
		if got, _ := os.ReadFile(p); string(got) != string(want) {
			t.Errorf("bad limits changed %s", p)
		}
	}
	if reloads() != before {
		t.Errorf("bad limits reloaded Dovecot")
	}
}
