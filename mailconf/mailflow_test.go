package mailconf_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/textproto"
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
	ldap := testenv.StartSlapd(t)
	ldap.Add(t, "ou=domains,"+ldap.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"domains"}})
	ldap.Add(t, "cn="+domain+",ou=domains,"+ldap.BaseDN, map[string][]string{"objectClass": {"univentionMailDomainname"}, "cn": {domain}})
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: fqdn})
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
