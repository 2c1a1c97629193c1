package mailconf_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"mailsync/fault"
	"mailsync/internal/testenv"
	"mailsync/mailconf"
)

// The computed limits are what Dovecot itself requires: doveconf is quiet
// with them and warns, with the same number, one below.
func TestDovecotLimitsMatchDoveconf(t *testing.T) {
	testenv.Require(t, "doveconf", "dovecot-core")
	ctx := context.Background()
	dir := t.TempDir()
	writeDovecotConf(t, dir)
	h := &mailconf.DovecotHost{Target: mailconf.DovecotTarget{ConfDir: dir, MailHome: dir + "/spool/%Ld/%Ln", IndexHome: dir + "/index/%Ld/%Ln"}}
	for _, limit := range []string{"400", "1000", "3000"} {
		p, _, err := h.Products(ctx, mailconf.Settings{
			"mail/dovecot/limits/default_client_limit":  limit,
			"mail/dovecot/limits/default_process_limit": limit,
			"mail/dovecot/limits/auth/client_limit":     "1", // floors low: the computed values show
			"mail/dovecot/limits/anvil/client_limit":    "1",
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := mailconf.Check(ctx, p); err != nil {
			t.Fatalf("limits %s: %v", limit, err)
		}
		lf := fileAt(t, p.Files, filepath.Join(dir, "conf.d", mailconf.DovecotLimitsFile))
		for _, svc := range []string{"auth", "anvil"} {
			re := regexp.MustCompile(`service ` + svc + ` \{\n  client_limit = (\d+)\n`)
			m := re.FindSubmatch(lf.Data)
			if m == nil {
				t.Fatalf("no %s client_limit in\n%s", svc, lf.Data)
			}
			var n int
			fmt.Sscan(string(m[1]), &n)
			lower := *lf
			lower.Data = re.ReplaceAll(lf.Data, []byte(fmt.Sprintf("service %s {\n  client_limit = %d\n", svc, n-1)))
			lp := *p
			lp.Files = []mailconf.File{lower}
			err := mailconf.Check(ctx, &lp)
			want := fmt.Sprintf("service %s { client_limit=%d } is lower than required under max. load (%d)", svc, n-1, n)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("limits %s, %s one lower: %v, want doveconf's %q", limit, svc, err, want)
			}
		}
	}
}

func TestDovecotValidateRefuses(t *testing.T) {
	testenv.Require(t, "doveconf", "dovecot-core")
	ctx := context.Background()
	dir := t.TempDir()
	writeDovecotConf(t, dir)
	h := &mailconf.DovecotHost{Target: mailconf.DovecotTarget{ConfDir: dir, MailHome: dir + "/spool/%Ld/%Ln"}}
	p, _, err := h.Products(ctx, mailconf.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	p.Files = []mailconf.File{{Path: filepath.Join(dir, "conf.d", mailconf.DovecotLimitsFile), Data: []byte("service imap {\n  process_limit = 10\n  process_min_avail = 20\n}\n"), Mode: 0o644}}
	_, err = mailconf.Install(ctx, p)
	if err == nil || !strings.Contains(err.Error(), "process_min_avail is higher than process_limit") || !fault.IsPermanent(err) {
		t.Errorf("err = %v, want doveconf's refusal, permanent", err)
	}
	if _, err := os.Stat(p.Files[0].Path); !os.IsNotExist(err) {
		t.Errorf("a refused fragment was installed: %v", err)
	}
	running, err := h.Reload(ctx)
	if err != nil || running {
		t.Errorf("reload with no Dovecot running = %v, %v; want false, nil", running, err)
	}
}

// writeDovecotConf writes a small installed configuration: a dovecot.conf
// including conf.d/*.conf like Debian's, protocols imap and lmtp.
func writeDovecotConf(t *testing.T, dir string) {
	t.Helper()
	conf := fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
listen = 127.0.0.1
protocols = imap lmtp
ssl = no
passdb {
  driver = static
  args = password=x
}
userdb {
  driver = static
  args = uid=8 gid=8 home=%[1]s/home/%%u
}
!include_try conf.d/*.conf
`, dir)
	if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dovecot.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "conf.d", "10-admin.conf"), []byte("service imap-login {\n  process_min_avail = 0\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func fileAt(t *testing.T, files []mailconf.File, path string) *mailconf.File {
	t.Helper()
	for i := range files {
		if files[i].Path == path {
			return &files[i]
		}
	}
	t.Fatalf("no rendered file %s", path)
	return nil
}
