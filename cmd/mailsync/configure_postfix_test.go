package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailsync/internal/testenv"
	"mailsync/mailconf"
)

// mailsync configure for Postfix, settings from a `ucr dump` file: each bad
// setting exits 2 naming the variable and writes nothing; a dry run shows
// the diff and writes nothing; configure installs, a second run changes
// nothing; check reports a hand edit as drift; and a running daemon
// re-renders when the UCR file changes and reloads the running Postfix.
func TestConfigurePostfix(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	ldap.Add(t, "ou=domains,"+ldap.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"domains"}})
	ldap.Add(t, "cn=example.org,ou=domains,"+ldap.BaseDN, map[string][]string{"objectClass": {"univentionMailDomainname"}, "cn": {"example.org"}})
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: mailHost})
	pf := testenv.NewPostfixServer(t, dc, testenv.PostfixServerOptions{})
	cfg, dir := verbConfig(t, ldap, dc, []string{"homeserver"}, fmt.Sprintf("configure: [postfix]\nucr_file: ucr.txt\n"+
		"postfix:\n  map_dir: %s\n  config_dir: %s\n  queue_dir: %s\n  data_dir: %s\n  tls_cert: %s\n  tls_key: %s\n  listen: {smtp: %q, submission: %q, smtps: %q}\n"+
		"dovecot:\n  lmtp_addr: inet:%s\n  auth_addr: inet:%s\n",
		pf.MapDir, pf.ConfigDir, pf.QueueDir, pf.DataDir, pf.CA.ServerCert, pf.CA.ServerKey, pf.SMTP, pf.Submission, pf.SMTPS,
		dc.LMTPAddr, dc.AuthAddr))
	ucr := func(lines ...string) {
		if err := os.WriteFile(filepath.Join(dir, "ucr.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mainCF := filepath.Join(pf.ConfigDir, "main.cf")
	read := func() string {
		data, _ := os.ReadFile(mainCF)
		return string(data)
	}
	original := read()

	for _, bad := range []struct{ key, value string }{
		{mailconf.KeyRelayHost, "relay example.net"},
		{mailconf.KeyMessageSizeLimit, "abc"},
		{mailconf.KeyArchiveFolder, "nobody@example.org"},
	} {
		ucr(bad.key + ": " + bad.value)
		_, errOut, code := verb(t, cfg, "configure")
		if code != 2 || !strings.Contains(errOut, bad.key+":") {
			t.Errorf("%s=%q: exit %d, want 2 naming the variable:\n%s", bad.key, bad.value, code, errOut)
		}
		if read() != original {
			t.Errorf("%s=%q: main.cf written", bad.key, bad.value)
		}
	}

	ucr("mail/messagesizelimit: 20000", "mail/archivefolder: alice@example.org")
	out, errOut, code := verb(t, cfg, "configure", "--dry-run")
	if code != 0 || !strings.Contains(out, "+message_size_limit = 20000") || !strings.Contains(out, "+always_bcc = alice@example.org") {
		t.Errorf("dry run: exit %d\n%s%s", code, out, errOut)
	}
	if read() != original {
		t.Error("dry run wrote main.cf")
	}
	out, errOut, code = verb(t, cfg, "configure")
	if code != 0 || !strings.Contains(out, "postfix: wrote "+mainCF) || !strings.Contains(read(), "message_size_limit = 20000") {
		t.Fatalf("configure: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ := verb(t, cfg, "configure"); !strings.Contains(out, "postfix: up to date") {
		t.Errorf("second configure:\n%s", out)
	}
	out, errOut, code = verb(t, cfg, "check")
	if code != 0 || !strings.Contains(out, "everything agrees") {
		t.Errorf("check after configure: exit %d\n%s%s", code, out, errOut)
	}
	if err := os.WriteFile(mainCF, []byte(read()+"soft_bounce = yes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code = verb(t, cfg, "check")
	if code != 1 || !strings.Contains(out, "postfix config drift") || !strings.Contains(out, mainCF) {
		t.Errorf("check after a hand edit: exit %d\n%s", code, out)
	}

	// The daemon re-renders on a settings change and reloads Postfix.
	pf.Start(t)
	reloads := func() int { return strings.Count(readFile(pf.LogPath), "reload -- version") }
	stop := startDaemon(t, cfg)
	defer stop()
	testenv.Eventually(t, 20*time.Second, func() error {
		if strings.Contains(read(), "soft_bounce = yes") {
			return fmt.Errorf("the hand edit is still in main.cf")
		}
		return nil
	})
	before := reloads()
	ucr("mail/messagesizelimit: 30000")
	testenv.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(read(), "message_size_limit = 30000") || strings.Contains(read(), "always_bcc") {
			return fmt.Errorf("main.cf not re-rendered")
		}
		if reloads() == before {
			return fmt.Errorf("Postfix not reloaded\n%s", pf.Log())
		}
		return nil
	})
}

func readFile(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}
