// Package demo is `make demo`: real servers on loopback (slapd, Dovecot,
// Postfix's postmap), a sample directory, the mailsync binary syncing them,
// a few live changes and their visible effect. Under `make test` the same
// run is a smoke test of the whole daemon; `make demo` passes -interactive,
// which keeps everything running until Ctrl-C and then cleans up.
package demo

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/internal/testenv"
)

var interactive = flag.Bool("interactive", false, "keep the demo running until Ctrl-C")

const fqdn = "mail.example.org"

type demo struct {
	t       *testing.T
	ldap    *testenv.Slapd
	dovecot *testenv.Dovecot
	postfix *testenv.Postfix
	dir     string
	maps    string
	out     *os.File
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
}

func TestDemo(t *testing.T) {
	out := os.Stdout
	start := time.Now()
	d := &demo{t: t, out: out, dir: t.TempDir()}
	d.maps = filepath.Join(d.dir, "maps")
	d.say("== mailsync demo: starting slapd, Dovecot and Postfix tools on 127.0.0.1")
	d.ldap = testenv.StartSlapd(t)
	d.dovecot = testenv.StartDovecot(t, d.ldap, testenv.DovecotOptions{FQDN: fqdn})
	d.postfix = testenv.StartPostfix(t)
	d.say("   slapd %s   IMAP %s   LMTP %s   doveadm %s", d.ldap.URL, d.dovecot.IMAPAddr, d.dovecot.LMTPAddr, d.dovecot.DoveadmURL)

	users, groups := d.populate()
	d.say("== sample directory: %d users, %d groups (g20 nests g18 and g19), alternative addresses, forwards", users, groups)

	bin := d.build()
	cfg := d.config()
	cmd, logPath := d.run(bin, cfg)
	d.say("== mailsync running (pid %d), log %s", cmd.Process.Pid, logPath)

	alias := "hash:" + filepath.Join(d.maps, "virtual_alias")
	mailbox := "hash:" + filepath.Join(d.maps, "virtual_mailbox")
	d.waitFor("initial sync: group g20 expands to its nested members", func() error {
		r, err := d.postfix.TryQuery(alias, "g20@example.org")
		if err != nil {
			return err
		}
		if n := len(strings.Split(r["g20@example.org"], ",")); n != 20 {
			return fmt.Errorf("g20 expands to %d addresses", n)
		}
		return nil
	})
	d.show("postmap -q (virtual alias map)", alias, "g01@example.org", "g20@example.org", "alias010@example.org", "u005@example.org")
	d.show("postmap -q (virtual mailbox map)", mailbox, "u001@example.org", "u200@example.org")

	// Live change: group membership.
	d.say("\n== live change: add u150 to g01")
	d.ldap.Modify(t, d.ldap.GroupDN("g01"), map[string][]string{"uniqueMember": append(members(d.ldap, 1), d.ldap.UserDN("u150"))})
	d.waitFor("g01 includes u150", func() error {
		r, err := d.postfix.TryQuery(alias, "g01@example.org")
		if err != nil {
			return err
		}
		if !strings.Contains(r["g01@example.org"], "u150@example.org") {
			return fmt.Errorf("g01 = %s", r["g01@example.org"])
		}
		return nil
	})
	d.show("postmap -q after the change", alias, "g01@example.org")

	d.say("\n== done in %s", time.Since(start).Round(100*time.Millisecond))
	if *interactive {
		d.say("   everything keeps running; press Ctrl-C to stop and clean up")
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		<-ctx.Done()
		stop()
		d.say("\n== stopping mailsync, Dovecot and slapd; removing their temp dirs")
	}
}

func members(ldap *testenv.Slapd, g int) []string {
	var m []string
	for i := 0; i < 10; i++ {
		m = append(m, ldap.UserDN(fmt.Sprintf("u%03d", (g-1)*10+i+1)))
	}
	return m
}

// populate writes the sample directory: 200 users, 20 groups of 10, g20
// nesting g18 and g19, every 10th user with an alternative address, every
// 50th with a forward.
func (d *demo) populate() (int, int) {
	t := d.t
	d.ldap.Add(t, "cn=example.org,"+d.ldap.BaseDN, map[string][]string{"objectClass": {"univentionMailDomainname"}, "cn": {"example.org"}})
	for i := 1; i <= 200; i++ {
		extra := map[string][]string{}
		if i%10 == 0 {
			extra["mailAlternativeAddress"] = []string{fmt.Sprintf("alias%03d@example.org", i)}
		}
		if i%50 == 5 {
			extra["mailForwardAddress"] = []string{fmt.Sprintf("u%03d@partner.example.net", i)}
			extra["mailForwardCopyToSelf"] = []string{"1"}
		}
		d.ldap.AddUser(t, fmt.Sprintf("u%03d", i), fmt.Sprintf("u%03d@example.org", i), extra)
	}
	for g := 1; g <= 19; g++ {
		d.ldap.AddGroup(t, fmt.Sprintf("g%02d", g), fmt.Sprintf("g%02d@example.org", g), members(d.ldap, g), nil)
	}
	d.ldap.AddGroup(t, "g20", "g20@example.org", []string{d.ldap.GroupDN("g18"), d.ldap.GroupDN("g19")}, nil)
	return 200, 20
}

func (d *demo) build() string {
	d.t.Helper()
	if p := os.Getenv("MAILSYNC_BIN"); p != "" {
		return p
	}
	bin := filepath.Join(d.dir, "mailsync")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, "build", "-o", bin, "mailsync/cmd/mailsync").CombinedOutput()
	if err != nil {
		d.t.Fatalf("build mailsync: %v\n%s", err, out)
	}
	return bin
}

func (d *demo) config() string {
	t := d.t
	write := func(name, body string) string {
		p := filepath.Join(d.dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("ldap.secret", d.ldap.AdminPW+"\n")
	write("doveadm.key", d.dovecot.APIKey+"\n")
	write("master.secret", d.dovecot.MasterPass+"\n")
	return write("mailsync.yaml", fmt.Sprintf(`host: %s
state_dir: %s/state
handlers: [aliases]
ldap:
  url: %s
  base_dn: %s
  bind_dn: %s
  bind_password_file: ldap.secret
nats:
  port: %d
dovecot:
  doveadm_url: %s
  api_key_file: doveadm.key
  imap_addr: %s
  master_user: %s
  master_password_file: master.secret
  mail_home: %s
postfix:
  map_dir: %s
  config_dir: %s
log:
  level: info
  format: json
`, fqdn, d.dir, d.ldap.URL, d.ldap.BaseDN, d.ldap.AdminDN, testenv.FreePort(t), d.dovecot.DoveadmURL,
		d.dovecot.IMAPAddr, d.dovecot.MasterUser, d.dovecot.MailHome, d.maps, d.postfix.ConfigDir))
}

func (d *demo) run(bin, cfg string) (*exec.Cmd, string) {
	t := d.t
	logPath := filepath.Join(d.dir, "mailsync.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mailsync: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("mailsync exited with %v on SIGTERM", err)
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Errorf("mailsync did not stop within 15s of SIGTERM")
		}
		logf.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("mailsync log:\n%s", tail(string(data), 60))
		}
	})
	return cmd, logPath
}

func (d *demo) waitFor(what string, cond func() error) {
	d.t.Helper()
	start := time.Now()
	testenv.Eventually(d.t, 30*time.Second, cond)
	d.say("   ok: %s (%s)", what, time.Since(start).Round(time.Millisecond))
}

func (d *demo) show(title, table string, keys ...string) {
	d.say("   %s", title)
	r, err := d.postfix.TryQuery(table, keys...)
	if err != nil {
		d.t.Fatalf("%s: %v", title, err)
	}
	for _, k := range keys {
		v, ok := r[k]
		if !ok {
			v = "(not found)"
		}
		d.say("     %-24s -> %s", k, abbreviate(v))
	}
}

func abbreviate(v string) string {
	parts := strings.Split(v, ",")
	sort.Strings(parts)
	if len(parts) > 6 {
		return strings.Join(parts[:6], ",") + fmt.Sprintf(",... (%d addresses)", len(parts))
	}
	return strings.Join(parts, ",")
}

func tail(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
