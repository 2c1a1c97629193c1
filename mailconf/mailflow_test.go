package mailconf_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/handlers/aliases"
	"mailsync/handlers/homeserver"
	"mailsync/internal/testenv"
	"mailsync/mailconf"
)

const (
	fqdn   = "mail.example.org"
	domain = "example.org"
	// otherHost is another mail home server; its sink stands for it.
	otherHost = "mail2.example.org"
)

// mailEnv is one mail host as a user meets it: slapd, Dovecot, mailsync's
// listener and map handlers, a real Postfix configured by mailsync's
// renderer, and a sink standing for the relay host and another home server.
type mailEnv struct {
	ldap     *testenv.Slapd
	dc       *testenv.Dovecot
	pf       *testenv.PostfixServer
	sink     *testenv.SMTPSink // the relay host
	home     *testenv.SMTPSink // another home server, otherHost
	pipe     *testenv.Pipeline
	settings mailconf.Settings
	t        testing.TB
}

func startMail(t *testing.T, settings mailconf.Settings) *mailEnv {
	t.Helper()
	return startMailWith(t, settings, testenv.DovecotOptions{})
}

// startMailWith is startMail with the test Dovecot's options (its FQDN is
// always fqdn).
func startMailWith(t *testing.T, settings mailconf.Settings, opts testenv.DovecotOptions) *mailEnv {
	t.Helper()
	ldap := testenv.StartSlapd(t)
	ldap.Add(t, "ou=domains,"+ldap.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"domains"}})
	ldap.Add(t, "cn="+domain+",ou=domains,"+ldap.BaseDN, map[string][]string{"objectClass": {"univentionMailDomainname"}, "cn": {domain}})
	opts.FQDN = fqdn
	dc := testenv.StartDovecot(t, ldap, opts)
	ca := testenv.NewCA(t)
	sink := testenv.StartSMTPSink(t, testenv.SinkOptions{TLS: ca})
	home := testenv.StartSMTPSink(t, testenv.SinkOptions{IP: "127.0.0.3", Host: otherHost})
	pf := testenv.NewPostfixServer(t, dc, testenv.PostfixServerOptions{CA: ca, HomeSink: home, Hosts: []string{otherHost}})
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	al, err := aliases.New(aliases.Config{Dir: pf.MapDir, MapType: "hash", PostfixConfigDir: pf.ConfigDir,
		HostFQDN: fqdn, Coalesce: 5 * time.Millisecond}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	hs, err := homeserver.New(homeserver.Config{Host: fqdn, Dir: pf.MapDir, MapType: "hash", PostfixConfigDir: pf.ConfigDir,
		Coalesce: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e := &mailEnv{ldap: ldap, dc: dc, pf: pf, sink: sink, home: home, settings: settings, t: t}
	e.pipe = testenv.StartPipeline(t, ldap, fqdn, al, hs)
	if _, err := e.configure(settings); err != nil {
		t.Fatalf("configure: %v", err)
	}
	pf.Start(t)
	return e
}

// configure renders and installs the config for settings, with the
// directory as it is now.
func (e *mailEnv) configure(settings mailconf.Settings) (*mailconf.Product, error) {
	entries := e.ldap.Entries(e.t)
	tables := aliases.Tables(fqdn, 1000, entries)
	dir := mailconf.DirectoryFromTables(tables[aliases.DomainMap], tables[aliases.MailboxMap], tables[aliases.AliasMap])
	return e.pf.Configure(settings, func(p *mailconf.Postfix) { p.Directory = dir })
}

// inbox waits until user's INBOX holds a message with subject.
func (e *mailEnv) inbox(t *testing.T, user, subject string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() error {
		if e.dc.HasMessage(t, user, subject) {
			return nil
		}
		return fmt.Errorf("%s has no message %q\n%s", user, subject, e.pf.Log())
	})
}

// code is the SMTP reply code of a refusal, 0 for none.
func code(err error) int {
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// directory is the sample directory the mail flow tests deliver through.
func (e *mailEnv) directory(t *testing.T) {
	t.Helper()
	l := e.ldap
	for _, ou := range []string{"lists"} {
		l.Add(t, "ou="+ou+","+l.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {ou}})
	}
	alice := l.AddUser(t, "alice", "alice@"+domain, map[string][]string{"mailAlternativeAddress": {"alice.liddell@" + domain}})
	bob := l.AddUser(t, "bob", "bob@"+domain, nil)
	carol := l.AddUser(t, "carol", "carol@"+domain, nil)
	dave := l.AddUser(t, "dave", "dave@"+domain, nil)
	l.AddUser(t, "frank", "frank@"+domain, nil)
	l.AddUser(t, "erin", "erin@"+domain, map[string][]string{"mailForwardAddress": {"frank@" + domain}, "mailForwardCopyToSelf": {"1"}})
	l.AddUser(t, "gina", "gina@"+domain, map[string][]string{"mailForwardAddress": {"frank@" + domain}, "mailForwardCopyToSelf": {"0"}})
	l.AddUser(t, "henry", "henry@"+domain, map[string][]string{"univentionMailHomeServer": {otherHost}})
	l.AddUser(t, "archive", "archive@"+domain, nil)
	l.AddGroup(t, "team", "team@"+domain, []string{alice, bob}, nil)
	// all → staff → core → carol: three levels of nesting.
	core := l.AddGroup(t, "core", "core@"+domain, []string{carol}, nil)
	staff := l.AddGroup(t, "staff", "staff@"+domain, []string{core, dave}, nil)
	l.AddGroup(t, "all", "all@"+domain, []string{staff}, nil)
	l.Add(t, "cn=news,ou=lists,"+l.BaseDN, map[string][]string{"objectClass": {"univentionMailList"}, "cn": {"news"},
		"mailPrimaryAddress": {"news@" + domain}, "univentionMailMember": {"bob@" + domain, "dave@" + domain}})
	l.Add(t, "cn=broken,ou=lists,"+l.BaseDN, map[string][]string{"objectClass": {"univentionMailList"}, "cn": {"broken"},
		"mailPrimaryAddress": {"broken@" + domain}, "univentionMailMember": {"nosuch@" + domain}})
	e.pipe.Settled(t)
}

func (e *mailEnv) send(t *testing.T, addr string, m testenv.Mail) {
	t.Helper()
	if m.From == "" {
		m.From = "sender@external.test"
	}
	if err := e.pf.Send(addr, m); err != nil {
		t.Fatalf("send %q to %v via %s: %v\n%s", m.Subject, m.To, addr, err, e.pf.Log())
	}
}

// TestMailFlow sends real mail through one Postfix, configured by mailsync
// and fed by its maps, into Dovecot; UCS's own tests are named by number.
func TestMailFlow(t *testing.T) {
	t.Parallel()
	// 127.0.0.2 is a client outside mynetworks.
	settings := mailconf.Settings{mailconf.KeyMyNetworks: "127.0.0.1/32"}
	e := startMail(t, settings)
	e.directory(t)
	pf := e.pf

	t.Run("39 ports 25 465 587 accept mail", func(t *testing.T) {
		e.send(t, pf.SMTP, testenv.Mail{To: []string{"alice@" + domain}, Subject: "port 25"})
		e.send(t, pf.Submission, testenv.Mail{From: "bob@" + domain, To: []string{"alice@" + domain}, Subject: "port 587",
			StartTLS: true, User: "bob@" + domain, Password: "secret"})
		e.send(t, pf.SMTPS, testenv.Mail{From: "bob@" + domain, To: []string{"alice@" + domain}, Subject: "port 465",
			WrapperTLS: true, User: "bob@" + domain, Password: "secret"})
		for _, s := range []string{"port 25", "port 587", "port 465"} {
			e.inbox(t, "alice@"+domain, s)
		}
	})

	t.Run("20 authentication per port", func(t *testing.T) {
		auth := func(addr string, m testenv.Mail) (advertised bool, err error) {
			c, err := pf.Dial(addr, m)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			advertised, _ = c.Extension("AUTH")
			id, err := c.Text.Cmd("AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00bob@"+domain+"\x00secret")))
			if err != nil {
				t.Fatal(err)
			}
			c.Text.StartResponse(id)
			defer c.Text.EndResponse(id)
			_, _, err = c.Text.ReadResponse(235)
			return advertised, err
		}
		if adv, err := auth(pf.SMTP, testenv.Mail{}); adv || err == nil {
			t.Errorf("port 25: AUTH advertised %v, AUTH answered %v; want neither (manual 14.7.5)", adv, err)
		}
		if adv, err := auth(pf.Submission, testenv.Mail{}); adv || err == nil {
			t.Errorf("port 587 before STARTTLS: AUTH advertised %v, answered %v; want it refused", adv, err)
		}
		if adv, err := auth(pf.Submission, testenv.Mail{StartTLS: true}); !adv || err != nil {
			t.Errorf("port 587 after STARTTLS: AUTH advertised %v, answered %v; want it to work", adv, err)
		}
		if adv, err := auth(pf.SMTPS, testenv.Mail{WrapperTLS: true}); !adv || err != nil {
			t.Errorf("port 465: AUTH advertised %v, answered %v; want it to work", adv, err)
		}
		// Submission without authentication is refused.
		err := pf.Send(pf.Submission, testenv.Mail{From: "x@external.test", To: []string{"alice@" + domain}, Subject: "no auth", StartTLS: true})
		if code(err) < 500 {
			t.Errorf("port 587 without AUTH: %v, want a 5xx refusal", err)
		}
		// The variable turns authentication on for port 25.
		on := mailconf.Settings{mailconf.KeyMyNetworks: "127.0.0.1/32", mailconf.PrefixMasterOptions + "smtp/smtpd_sasl_auth_enable": "yes"}
		if _, err := e.configure(on); err != nil {
			t.Fatal(err)
		}
		defer e.configure(settings)
		if adv, err := auth(pf.SMTP, testenv.Mail{}); !adv || err != nil {
			t.Errorf("port 25 with smtpd_sasl_auth_enable=yes: AUTH advertised %v, answered %v; want it to work", adv, err)
		}
	})

	t.Run("05 no open relay", func(t *testing.T) {
		outside := testenv.Mail{LocalIP: "127.0.0.2", To: []string{"someone@external.test"}, Subject: "relay?"}
		if err := pf.Send(pf.SMTP, outside); code(err) != 554 {
			t.Errorf("relay from outside mynetworks without AUTH: %v, want 554 Relay access denied", err)
		}
		inbound := testenv.Mail{LocalIP: "127.0.0.2", To: []string{"bob@" + domain}, Subject: "from outside"}
		e.send(t, pf.SMTP, inbound)
		e.inbox(t, "bob@"+domain, "from outside")
	})

	t.Run("22 unknown recipient refused at RCPT", func(t *testing.T) {
		err := pf.Send(pf.SMTP, testenv.Mail{LocalIP: "127.0.0.2", From: "x@external.test", To: []string{"nosuch@" + domain}, Subject: "unknown"})
		if code(err) != 550 || !strings.Contains(err.Error(), "5.1.1") {
			t.Errorf("RCPT to an unknown address of a hosted domain: %v, want 550 5.1.1", err)
		}
	})

	t.Run("delivery through the maps", func(t *testing.T) {
		for _, c := range []struct {
			rcpt, subject string
			want          []string
			not           []string
		}{
			{"alice@" + domain, "to a user", []string{"alice"}, nil},
			{"alice.liddell@" + domain, "to an alternative address", []string{"alice"}, nil},
			{"team@" + domain, "to a group", []string{"alice", "bob"}, []string{"carol"}},
			{"all@" + domain, "to a 3-level nested group", []string{"carol", "dave"}, []string{"alice"}},
			{"erin@" + domain, "to a forward with copy", []string{"erin", "frank"}, nil},
			{"gina@" + domain, "to a forward without copy", []string{"frank"}, []string{"gina"}},
			{"news@" + domain, "to a mailing list", []string{"bob", "dave"}, []string{"alice"}},
		} {
			e.send(t, pf.SMTP, testenv.Mail{To: []string{c.rcpt}, Subject: c.subject})
			for _, u := range c.want {
				e.inbox(t, u+"@"+domain, c.subject)
			}
			defer func() {
				for _, u := range c.not {
					if e.dc.HasMessage(t, u+"@"+domain, c.subject) {
						t.Errorf("%s received %q (sent to %s)", u, c.subject, c.rcpt)
					}
				}
			}()
		}
		e.send(t, pf.SMTP, testenv.Mail{To: []string{"henry@" + domain}, Subject: "to a user homed elsewhere"})
		m := e.home.WaitFor(t, "to a user homed elsewhere", 20*time.Second)
		if len(m.To) != 1 || m.To[0] != "henry@"+domain {
			t.Errorf("home server sink got RCPT %v, want henry@%s", m.To, domain)
		}
	})
}

// TestPostfixSettings changes the settings of one running Postfix the way
// an administrator would (mailsync's renderer, install, reload) and checks
// what mail does then.
func TestPostfixSettings(t *testing.T) {
	t.Parallel()
	base := mailconf.Settings{mailconf.KeyMyNetworks: "127.0.0.1/32"}
	e := startMail(t, base)
	e.directory(t)
	pf := e.pf
	with := func(kv ...string) mailconf.Settings {
		s := mailconf.Settings{}
		for k, v := range base {
			s[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			s[kv[i]] = kv[i+1]
		}
		return s
	}
	configure := func(t *testing.T, s mailconf.Settings) *mailconf.Product {
		t.Helper()
		p, err := e.configure(s)
		if err != nil {
			t.Fatalf("configure %v: %v", s, err)
		}
		return p
	}
	relay := "[127.0.0.1]:" + strings.Split(e.sink.Addr, ":")[1]

	t.Run("38 message size limit", func(t *testing.T) {
		configure(t, with(mailconf.KeyMessageSizeLimit, "20000"))
		err := pf.Send(pf.SMTP, testenv.Mail{From: "x@external.test", To: []string{"alice@" + domain}, Subject: "too big", Body: strings.Repeat("0123456789\r\n", 2500)})
		if code(err) != 552 {
			t.Errorf("a 30 kB message over a 20000 byte limit: %v, want 552", err)
		}
		e.send(t, pf.SMTP, testenv.Mail{To: []string{"alice@" + domain}, Subject: "small enough", Body: strings.Repeat("0123456789\r\n", 800)})
		e.inbox(t, "alice@"+domain, "small enough")
		if e.dc.HasMessage(t, "alice@"+domain, "too big") {
			t.Error("the message over the limit was delivered")
		}
	})

	t.Run("33 smart host", func(t *testing.T) {
		configure(t, with(mailconf.KeyRelayHost, relay))
		e.send(t, pf.SMTP, testenv.Mail{From: "alice@" + domain, To: []string{"someone@external.test"}, Subject: "via the relay"})
		if m := e.sink.WaitFor(t, "via the relay", 20*time.Second); m.To[0] != "someone@external.test" {
			t.Errorf("relay got RCPT %v", m.To)
		}

		// mail/relayauth: the relay sees AUTH with smtp_auth's credentials, over TLS.
		authSink := testenv.StartSMTPSink(t, testenv.SinkOptions{TLS: pf.CA, User: "relayuser", Password: "relay-secret"})
		authRelay := "[127.0.0.1]:" + strings.Split(authSink.Addr, ":")[1]
		_, err := e.pf.Configure(with(mailconf.KeyRelayHost, authRelay, mailconf.KeyRelayAuth, "yes"), func(p *mailconf.Postfix) {
			p.RelayCredentials = "relayuser:relay-secret"
		})
		if err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(filepath.Join(pf.ConfigDir, "smtp_auth.db")); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("smtp_auth.db: %v %v, want mode 0600", st, err)
		}
		e.send(t, pf.SMTP, testenv.Mail{From: "alice@" + domain, To: []string{"someone@external.test"}, Subject: "via the authenticated relay"})
		m := authSink.WaitFor(t, "via the authenticated relay", 20*time.Second)
		if m.AuthUser != "relayuser" || m.AuthPass != "relay-secret" || !m.TLS {
			t.Errorf("relay saw AUTH %q/%q, TLS %v; want relayuser with smtp_auth's password, over TLS", m.AuthUser, m.AuthPass, m.TLS)
		}
	})

	t.Run("61 main.cf.local and master.cf.local", func(t *testing.T) {
		extra := testenv.FreePort(t)
		pf.SetLocal(t, "smtpd_banner = $myhostname ESMTP from-main-cf-local\n",
			fmt.Sprintf("127.0.0.1:%d inet n - n - - smtpd\n  -o smtpd_banner=from-master-cf-local\n", extra))
		defer func() { pf.SetLocal(t, "", ""); configure(t, base) }()
		p := configure(t, base)
		if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "main.cf.local line") || !strings.Contains(p.Warnings[0], "sets smtpd_banner, already set in") {
			t.Errorf("warnings %q, want smtpd_banner set twice, naming both places", p.Warnings)
		}
		for addr, want := range map[string]string{pf.SMTP: "from-main-cf-local", fmt.Sprintf("127.0.0.1:%d", extra): "from-master-cf-local"} {
			// A reload is graceful: an smtpd of the old generation may
			// answer a moment longer.
			testenv.Eventually(t, 10*time.Second, func() error {
				g, err := testenv.Greeting(addr)
				if err != nil || !strings.Contains(g, want) {
					return fmt.Errorf("greeting on %s: %q %v, want %q", addr, g, err, want)
				}
				return nil
			})
		}
	})

	t.Run("archive folder gets every incoming and outgoing message", func(t *testing.T) {
		configure(t, with(mailconf.KeyArchiveFolder, "archive@"+domain, mailconf.KeyRelayHost, relay))
		e.send(t, pf.SMTP, testenv.Mail{To: []string{"bob@" + domain}, Subject: "incoming, archived"})
		e.send(t, pf.Submission, testenv.Mail{From: "bob@" + domain, To: []string{"someone@external.test"}, Subject: "outgoing, archived",
			StartTLS: true, User: "bob@" + domain, Password: "secret"})
		e.inbox(t, "bob@"+domain, "incoming, archived")
		e.sink.WaitFor(t, "outgoing, archived", 20*time.Second)
		e.inbox(t, "archive@"+domain, "incoming, archived")
		e.inbox(t, "archive@"+domain, "outgoing, archived")
	})

	t.Run("soft bounce keeps mail to an unknown user queued", func(t *testing.T) {
		// broken@ is a list whose only member does not exist.
		configure(t, base)
		e.send(t, pf.SMTP, testenv.Mail{To: []string{"broken@" + domain}, Subject: "hard bounce"})
		testenv.Eventually(t, 20*time.Second, func() error {
			if !strings.Contains(readLog(pf), "to=<nosuch@"+domain+">, orig_to=<broken@"+domain+">") || !strings.Contains(readLog(pf), "status=bounced") {
				return fmt.Errorf("no bounce yet\n%s", pf.Log())
			}
			return nil
		})
		configure(t, with(mailconf.KeySoftBounce, "yes"))
		e.send(t, pf.SMTP, testenv.Mail{To: []string{"broken@" + domain}, Subject: "soft bounce"})
		testenv.Eventually(t, 20*time.Second, func() error {
			for _, m := range pf.QueueEntries(t) {
				for _, r := range m.Recipients {
					if m.QueueName == "deferred" && r.Address == "nosuch@"+domain {
						return nil
					}
				}
			}
			return fmt.Errorf("no message to nosuch@%s deferred in the queue: %v", domain, pf.QueueEntries(t))
		})
		if !strings.Contains(readLog(pf), "status=SOFTBOUNCE") {
			t.Errorf("no SOFTBOUNCE in the mail log\n%s", pf.Log())
		}
	})

	t.Run("postscreen", func(t *testing.T) {
		configure(t, with(mailconf.KeyPostscreen, "yes", mailconf.PrefixPostscreen+"greet/wait", "1s"))
		defer configure(t, base)
		// A client (outside mynetworks) that speaks before the greeting
		// is dropped, once the reload has put postscreen on the port.
		testenv.Eventually(t, 15*time.Second, func() error {
			reply, err := testenv.Pregreet(pf.SMTP, "127.0.0.2", "EHLO spambot.example.net")
			if !strings.HasPrefix(reply, "521") {
				return fmt.Errorf("pregreeting client got %q (%v), want 521 and the connection dropped", reply, err)
			}
			return nil
		})
		// A client that waits is passed to smtpd and delivers.
		e.send(t, pf.SMTP, testenv.Mail{LocalIP: "127.0.0.2", To: []string{"carol@" + domain}, Subject: "past postscreen"})
		e.inbox(t, "carol@"+domain, "past postscreen")
	})

	t.Run("bad settings are refused and change nothing", func(t *testing.T) {
		before, err := os.ReadFile(filepath.Join(pf.ConfigDir, "main.cf"))
		if err != nil {
			t.Fatal(err)
		}
		for key, value := range map[string]string{
			mailconf.KeyRelayHost:        "relay example.net",
			mailconf.KeyMessageSizeLimit: "abc",
			mailconf.KeyArchiveFolder:    "nobody@" + domain,
		} {
			_, err := e.configure(with(key, value))
			var se *mailconf.SettingError
			if !errors.As(err, &se) || se.Key != key || !strings.Contains(err.Error(), key) {
				t.Errorf("%s=%q: %v, want a SettingError naming %s", key, value, err, key)
			}
			after, _ := os.ReadFile(filepath.Join(pf.ConfigDir, "main.cf"))
			if string(after) != string(before) {
				t.Errorf("%s=%q changed main.cf", key, value)
			}
		}
		// An external archive address is accepted as it is.
		if _, err := e.configure(with(mailconf.KeyArchiveFolder, "archive@external.test")); err != nil {
			t.Errorf("external archive address: %v", err)
		}
		e.send(t, pf.SMTP, testenv.Mail{To: []string{"dave@" + domain}, Subject: "still serving"})
		e.inbox(t, "dave@"+domain, "still serving")
	})
}

func readLog(pf *testenv.PostfixServer) string {
	data, _ := os.ReadFile(pf.LogPath)
	return string(data)
}
