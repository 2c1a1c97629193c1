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
	status  string
	ca      *testenv.CA
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
	d.ca = testenv.NewCA(t) // the doveadm API is served over HTTPS
	d.dovecot = testenv.StartDovecot(t, d.ldap, testenv.DovecotOptions{FQDN: fqdn, DoveadmTLS: d.ca})
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
	d.waitFor("every handler caught up (mailsync status: nothing pending)", func() error {
		out, err := exec.Command(bin, "status", "-c", cfg).CombinedOutput()
		if err != nil {
			return fmt.Errorf("mailsync status: %v: %s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) == 5 && f[0] != "CONSUMER" && (f[1] != "0" || f[2] != "0") {
				return fmt.Errorf("%s", line)
			}
		}
		d.status = string(out)
		return nil
	})
	d.say("   mailsync status:")
	for _, line := range strings.Split(strings.TrimSpace(d.status), "\n") {
		d.say("     %s", line)
	}
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

	// Live change: an address rename with mail in the box.
	d.say("\n== live change: rename u001@example.org to alice@example.org, with 3 messages in the box")
	d.waitFor("u001's mailbox exists", func() error {
		_, err := d.dovecot.IMAPReader().Folders(context.Background(), "u001@example.org")
		return err
	})
	for i := 1; i <= 3; i++ {
		d.dovecot.Deliver(t, "u001@example.org", fmt.Sprintf("demo message %d", i))
	}
	d.showMailbox("u001@example.org")
	d.ldap.Modify(t, d.ldap.UserDN("u001"), map[string][]string{"mailPrimaryAddress": {"alice@example.org"}})
	d.waitFor("alice@example.org holds the 3 messages", func() error {
		f, err := d.dovecot.IMAPReader().Folders(context.Background(), "alice@example.org")
		if err != nil {
			return err
		}
		if f["INBOX"].Messages != 3 {
			return fmt.Errorf("INBOX has %d messages", f["INBOX"].Messages)
		}
		return nil
	})
	d.showMailbox("alice@example.org")
	if err := d.dovecot.Login("u001@example.org", "secret"); err == nil {
		t.Errorf("the old address still logs in")
	} else {
		d.say("   the old address u001@example.org no longer logs in: %v", err)
	}
	d.show("postmap -q after the rename", mailbox, "u001@example.org", "alice@example.org")

	// Live change: the home server.
	transport := "hash:" + filepath.Join(d.maps, "transport")
	d.say("\n== live change: u002's home server becomes mx2.example.org")
	d.ldap.Modify(t, d.ldap.UserDN("u002"), map[string][]string{"univentionMailHomeServer": {"mx2.example.org"}})
	d.waitFor("u002 is routed to mx2", func() error {
		r, err := d.postfix.TryQuery(transport, "u002@example.org")
		if err != nil {
			return err
		}
		if r["u002@example.org"] != "smtp:[mx2.example.org]" {
			return fmt.Errorf("transport u002 = %q", r["u002@example.org"])
		}
		return nil
	})
	d.show("postmap -q (transport map)", transport, "u002@example.org", "u003@example.org")
	if err := d.dovecot.TryDeliver("u002@example.org", "should go to mx2"); err != nil {
		d.say("   this host's LMTP refuses u002 now: %v", err)
	} else {
		t.Errorf("LMTP here still accepts u002, homed on mx2")
	}

	d.say("\n== done in %s", time.Since(start).Round(100*time.Millisecond))
	if *interactive {
		// Listen before saying so: a Ctrl-C right after the line must not
		// find the signal still ignored (scripts/demo.sh ignores it).
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		d.say("   everything keeps running; press Ctrl-C to stop and clean up")
		<-ctx.Done()
		stop()
		d.say("\n== stopping mailsync, Dovecot and slapd; removing their temp dirs")
	}
}

func (d *demo) showMailbox(user string) {
	f := d.dovecot.MailboxSummary(d.t, user)
	names := make([]string, 0, len(f))
	for n := range f {
		names = append(names, n)
	}
	sort.Strings(names)
	d.say("   IMAP folders of %s:", user)
	for _, n := range names {
		d.say("     %-8s %d messages", n, f[n].Messages)
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
	return testenv.BuildRelease(d.t)
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
handlers: [mailbox, aliases, homeserver]
ldap:
  url: %s
  base_dn: %s
  bind_dn: %s
  bind_password_file: ldap.secret
nats:
  port: %d
dovecot:
  doveadm_url: %s
  ca_file: %s
  api_key_file: doveadm.key
  imap_addr: %s
  master_user: %s
  master_password_file: master.secret
  mail_home: %s
  owner: "%d:%d"
postfix:
  map_dir: %s
  config_dir: %s
metrics:
  listen: 127.0.0.1:%d
log:
  level: debug
  format: json
`, fqdn, d.dir, d.ldap.URL, d.ldap.BaseDN, d.ldap.AdminDN, testenv.FreePort(t), d.dovecot.DoveadmURL, d.ca.CertFile,
		d.dovecot.IMAPAddr, d.dovecot.MasterUser, d.dovecot.MailHome, d.dovecot.UID, d.dovecot.GID, d.maps, d.postfix.ConfigDir, testenv.FreePort(t)))
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
		data, _ := os.ReadFile(logPath)
		for name, secret := range map[string]string{"LDAP bind password": d.ldap.AdminPW,
			"doveadm API key": d.dovecot.APIKey, "master password": d.dovecot.MasterPass} {
			if strings.Contains(string(data), secret) {
				t.Errorf("the %s appears in mailsync's debug log", name)
			}
		}
		if t.Failed() || os.Getenv("MAILSYNC_DEMO_LOG") != "" {
			data, _ := os.ReadFile(logPath)
			t.Logf("mailsync log:\n%s", tail(string(data), 60))
		}
	})
	return cmd, logPath
}

func (d *demo) waitFor(what string, cond func() error) {
	d.t.Helper()
	start := time.Now()
	testenv.Eventually(d.t, 60*time.Second, cond)
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
