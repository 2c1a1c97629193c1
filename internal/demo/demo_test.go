// Package demo is `make demo`: real servers on loopback (slapd, Dovecot, a
// Postfix configured by `mailsync configure`, SMTP sinks standing for the
// relay host and another home server), a sample directory, the mailsync
// binary syncing them, real mail sent over SMTP and read back over IMAP, a
// few live changes and their visible effect. Under `make test` the same
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
	postfix *testenv.Postfix // postmap, for lookups
	server  *testenv.PostfixServer
	relay   *testenv.SMTPSink // the relay host (mail/relayhost)
	mx2     *testenv.SMTPSink // the other home server, mx2.example.org
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
	d.say("== mailsync demo: starting slapd, Dovecot, Postfix and two SMTP sinks on loopback")
	d.ldap = testenv.StartSlapd(t)
	d.ca = testenv.NewCA(t) // the doveadm API and smtpd are served with its certificate
	d.dovecot = testenv.StartDovecot(t, d.ldap, testenv.DovecotOptions{FQDN: fqdn, DoveadmTLS: d.ca})
	d.relay = testenv.StartSMTPSink(t, testenv.SinkOptions{TLS: d.ca, Host: "relay.example.net"})
	d.mx2 = testenv.StartSMTPSink(t, testenv.SinkOptions{IP: "127.0.0.3", Host: "mx2.example.org"})
	d.server = testenv.NewPostfixServer(t, d.dovecot, testenv.PostfixServerOptions{CA: d.ca, HomeSink: d.mx2, Hosts: []string{"mx2.example.org"}})
	d.postfix = &testenv.Postfix{Postmap: testenv.Require(t, "postmap", "postfix"), ConfigDir: d.server.ConfigDir}
	d.maps = d.server.MapDir
	d.say("   slapd %s   IMAP %s   LMTP %s   doveadm %s", d.ldap.URL, d.dovecot.IMAPAddr, d.dovecot.LMTPAddr, d.dovecot.DoveadmURL)
	d.say("   relay host sink %s   mx2.example.org sink %s", d.relay.Addr, d.mx2.Addr)

	users, groups := d.populate()
	d.say("== sample directory: %d users, %d groups (g20 nests g18 and g19), alternative addresses, forwards", users, groups)

	bin := d.build()
	cfg := d.config()
	d.say("\n== mailsync configure: Postfix's main.cf and master.cf from the settings (manual 14.7)")
	conf, err := exec.Command(bin, "configure", "-c", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("mailsync configure: %v\n%s", err, conf)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(conf)), "\n") {
		d.say("   %s", l)
	}
	d.server.Start(t)
	d.say("   Postfix running: SMTP %s   submission %s   smtps %s   (config %s)", d.server.SMTP, d.server.Submission, d.server.SMTPS, d.server.ConfigDir)
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

	d.mail()

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
		d.send("u001@example.org", fmt.Sprintf("demo message %d", i))
	}
	d.waitFor("the 3 messages arrived over SMTP", func() error { return d.arrived("u001@example.org", "demo message 3") })
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
	reloads := func() int {
		data, _ := os.ReadFile(d.server.LogPath)
		return strings.Count(string(data), "reload -- version")
	}
	reloaded := reloads()
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
	// The maps and the mailbox handler are separate consumers: Dovecot's
	// cached login for u002 goes when the mailbox handler flushes it, which
	// may come a moment after the transport map.
	var refusal error
	d.waitFor("this host's LMTP refuses u002 (mailsync flushed its cached login)", func() error {
		if err := d.dovecot.TryDeliver("u002@example.org", "should go to mx2"); err != nil {
			refusal = err
			return nil
		}
		return fmt.Errorf("LMTP here still accepts u002, homed on mx2")
	})
	d.say("   %v", refusal)
	// Postfix's trivial-rewrite notices a changed transport map only on a
	// new connection; mailsync reloads Postfix after installing one.
	d.waitFor("mailsync reloaded Postfix for the new transport map", func() error {
		if reloads() == reloaded {
			return fmt.Errorf("no reload in %s", d.server.LogPath)
		}
		return nil
	})
	time.Sleep(time.Second) // the reload restarts qmgr and trivial-rewrite
	d.send("u002@example.org", "for u002, now on mx2")
	m := d.mx2.WaitFor(t, "for u002, now on mx2", 30*time.Second)
	d.say("   mail to u002 went to mx2's sink: RCPT %v", m.To)

	d.say("\n== done in %s", time.Since(start).Round(100*time.Millisecond))
	if *interactive {
		// Listen before saying so: a Ctrl-C right after the line must not
		// find the signal still ignored (scripts/demo.sh ignores it).
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		d.visitor(bin, cfg)
		d.say("   everything keeps running; press Ctrl-C to stop and clean up")
		<-ctx.Done()
		stop()
		d.say("\n== stopping mailsync, Postfix, Dovecot and slapd; removing their temp dirs")
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
	return testenv.NewMailsyncConfig(d.t, d.dir).Set("host", fqdn).Handlers("mailbox", "aliases", "homeserver").
		Slapd(d.ldap).Dovecot(d.dovecot).Postfix(d.postfix, d.maps).
		Set("dovecot.ca_file", d.ca.CertFile).
		Set("dovecot.lmtp_addr", "inet:"+d.dovecot.LMTPAddr).
		Set("dovecot.auth_addr", "inet:"+d.dovecot.AuthAddr).
		Merge(d.postfixConfig()).
		Set("metrics.listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(d.t))).
		Write("")
}

// postfixConfig is the rest of the config's postfix section and the
// settings: the Postfix mailsync configures, relaying through the sink.
func (d *demo) postfixConfig() string {
	p := d.server
	return fmt.Sprintf(`postfix:
  queue_dir: %s
  data_dir: %s
  tls_cert: %s
  tls_key: %s
  listen: {smtp: %q, submission: %q, smtps: %q}
configure: [postfix]
policy:
  mail/relayhost: "[%s]:%s"
  mail/postfix/mynetworks: 127.0.0.1/32
`, p.QueueDir, p.DataDir, p.CA.ServerCert, p.CA.ServerKey, p.SMTP, p.Submission, p.SMTPS,
		strings.Split(d.relay.Addr, ":")[0], strings.Split(d.relay.Addr, ":")[1])
}

// send sends one message to rcpt over SMTP, port 25.
func (d *demo) send(rcpt, subject string) {
	d.t.Helper()
	err := d.server.Send(d.server.SMTP, testenv.Mail{From: "visitor@partner.example.net", To: []string{rcpt}, Subject: subject,
		Body: "Sent over SMTP by the mailsync demo."})
	if err != nil {
		d.t.Fatalf("send %q to %s: %v\n%s", subject, rcpt, err, d.server.Log())
	}
}

// arrived reports whether user's INBOX, read over IMAP, has subject.
func (d *demo) arrived(user, subject string) error {
	if d.dovecot.HasMessage(d.t, user, subject) {
		return nil
	}
	return fmt.Errorf("%s has no %q yet\n%s", user, subject, d.server.Log())
}

// mail sends real mail over SMTP through Postfix, routed by mailsync's
// maps, and shows where it arrived.
func (d *demo) mail() {
	d.say("\n== real mail over SMTP (port 25) through Postfix, routed by mailsync's maps")
	for _, c := range []struct {
		rcpt, what string
		inboxes    []string
		relayed    string
	}{
		{"u003@example.org", "a user", []string{"u003"}, ""},
		{"g02@example.org", "a group", []string{"u011", "u015", "u020"}, ""},
		{"g20@example.org", "a nested group (g20 = g18 + g19)", []string{"u171", "u180", "u190"}, ""},
		{"alias010@example.org", "an alternative address of u010", []string{"u010"}, ""},
		{"u055@example.org", "a forward with copy to self (to u055@partner.example.net)", []string{"u055"}, "u055@partner.example.net"},
	} {
		subject := "hello " + c.rcpt
		d.send(c.rcpt, subject)
		for _, u := range c.inboxes {
			d.waitFor(fmt.Sprintf("%-22s (%s): in %s's INBOX over IMAP", c.rcpt, c.what, u), func() error { return d.arrived(u+"@example.org", subject) })
		}
		if c.relayed != "" {
			m := d.relay.WaitFor(d.t, subject, 30*time.Second)
			d.say("   ok: %-22s and at the relay host's sink: RCPT %v, TLS %v", c.rcpt, m.To, m.TLS)
		}
	}
	d.say("   u003's INBOX over IMAP: %q", d.dovecot.Subjects(d.t, "u003@example.org"))
	if err := d.server.Send(d.server.SMTP, testenv.Mail{From: "x@partner.example.net", To: []string{"nobody@example.org"}, Subject: "x"}); err != nil {
		d.say("   unknown recipient refused at RCPT: %v", err)
	} else {
		d.t.Errorf("mail to nobody@example.org was accepted")
	}
}

// visitor prints what a visitor can try against the running system.
func (d *demo) visitor(bin, cfg string) {
	p := d.server
	msg := filepath.Join(d.dir, "hello.txt")
	_ = os.WriteFile(msg, []byte("Subject: hello from a visitor\r\n\r\nHi!\r\n"), 0o644)
	d.say("\n== try it yourself (users' password: secret)")
	d.say("   send mail to a group:   curl -s smtp://%s --mail-from me@partner.example.net --mail-rcpt g01@example.org -T %s", p.SMTP, msg)
	d.say("   read an INBOX:          curl -s -u alice@example.org:secret 'imap://%s/INBOX' -X 'FETCH 1:* (ENVELOPE)'", d.dovecot.IMAPAddr)
	d.say("   submission with AUTH:   curl -s --ssl-reqd -k smtp://%s --user u003@example.org:secret --mail-from u003@example.org --mail-rcpt someone@partner.example.net -T %s", p.Submission, msg)
	d.say("   change a group:         ldapmodify -x -H %s -D %s -w %s  (then the mail to it changes at once)", d.ldap.URL, d.ldap.AdminDN, d.ldap.AdminPW)
	d.say("   the rendered config:    postconf -c %s -n;  %s configure -c %s --dry-run", p.ConfigDir, bin, cfg)
	d.say("   settings (UCR names):   edit the policy section of %s; the running mailsync re-renders and reloads Postfix", cfg)
	d.say("   drift and sync check:   %s check -c %s", bin, cfg)
	d.say("   Postfix's queue and log: postqueue -c %s -p;  tail -f %s", p.ConfigDir, p.LogPath)
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
			"doveadm API key": d.dovecot.APIKey} {
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
