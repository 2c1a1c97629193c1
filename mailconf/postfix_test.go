package mailconf_test

import (
	"errors"
	"strings"
	"testing"

	"mailsync/mailconf"
)

// ucsPostfix is a UCS host's layout (Debian's paths, UCS's sockets).
func ucsPostfix() mailconf.Postfix {
	return mailconf.Postfix{
		Host: "mail.example.org", ConfigDir: "/etc/postfix", QueueDir: "/var/spool/postfix", DataDir: "/var/lib/postfix",
		Binary: "/usr/sbin/postfix", Postmap: "/usr/sbin/postmap", MapDir: "/etc/postfix/mailsync", MapType: "hash",
		LMTP: "unix:private/dovecot-lmtp", AuthPath: "private/auth",
		TLSCert: "/etc/ssl/certs/ssl-cert-snakeoil.pem", TLSKey: "/etc/ssl/private/ssl-cert-snakeoil.key",
		SMTP: "smtp", Submission: "submission", SMTPS: "submissions",
		Directory: mailconf.DirectoryFromTables([]byte("example.org example.org\n"),
			[]byte("alice@example.org alice@example.org\narchive@example.org archive@example.org\n"),
			[]byte("team@example.org alice@example.org\n")),
	}
}

func TestRenderPostfixGolden(t *testing.T) {
	for _, tc := range []struct {
		name     string
		s        mailconf.Settings
		params   func(*mailconf.Postfix)
		warnings int
	}{
		{name: "postfix-default", s: mailconf.Settings{}},
		{name: "postfix-everything", s: mailconf.Settings{
			mailconf.KeyRelayHost:                                        "[relay.example.net]:587",
			mailconf.KeyRelayAuth:                                        "yes",
			mailconf.KeyMessageSizeLimit:                                 "0",
			mailconf.KeyArchiveFolder:                                    "Archive@Example.org",
			mailconf.KeySoftBounce:                                       "yes",
			mailconf.KeyPostscreen:                                       "yes",
			mailconf.PrefixPostscreen + "dnsbl/sites":                    "zen.spamhaus.org*2",
			mailconf.PrefixPostscreen + "greet/wait":                     "3s",
			mailconf.PrefixMasterOptions + "smtp/smtpd_sasl_auth_enable": "yes",
			mailconf.PrefixMasterOptions + "submission/smtpd_tls_mandatory_protocols": ">=TLSv1.2",
			mailconf.KeyExpansionLimit: "2000",
		}, params: func(p *mailconf.Postfix) {
			p.RelayCredentials = "relayuser:relay-secret"
			p.MainCFLocal = "testdata/postfix-main.cf.local"
			p.MasterCFLocal = "testdata/postfix-master.cf.local"
		}, warnings: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pf := ucsPostfix()
			if tc.params != nil {
				tc.params(&pf)
			}
			p, err := mailconf.RenderPostfix(tc.s, pf)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Warnings) != tc.warnings {
				t.Errorf("warnings %q, want %d", p.Warnings, tc.warnings)
			}
			// 14.7.7: a parameter set twice, naming both places.
			if tc.warnings > 0 && !strings.HasPrefix(p.Warnings[0],
				"testdata/postfix-main.cf.local line 2 sets virtual_alias_expansion_limit, already set in /etc/postfix/main.cf line 90 ") {
				t.Errorf("warning %q", p.Warnings[0])
			}
			checkGolden(t, tc.name, p.Files)
		})
	}
}

// Each bad setting is refused naming its variable; nothing is rendered.
func TestRenderPostfixRefusesBadSettings(t *testing.T) {
	for _, tc := range []struct{ key, value string }{
		{mailconf.KeyRelayHost, "relay example.net"},
		{mailconf.KeyRelayHost, "relay.example.net;reject"},
		{mailconf.KeyMessageSizeLimit, "abc"},
		{mailconf.KeyMessageSizeLimit, "-1"},
		{mailconf.KeyArchiveFolder, "nobody@example.org"},
		{mailconf.KeyArchiveFolder, "not an address"},
		{mailconf.KeySoftBounce, "maybe"},
		{mailconf.KeyTLSClientLevel, "paranoid"},
		{mailconf.KeyPostscreen, "perhaps"},
		{mailconf.PrefixPostscreen + "Greet/Wait", "1s"},
		{mailconf.PrefixMasterOptions + "pickup/x", "1"},
		{mailconf.PrefixMasterOptions + "smtp/smtpd_banner", "two words"},
		{mailconf.KeyMyNetworks, "127.0.0.0/8\nrelayhost = evil"},
		{mailconf.KeyExpansionLimit, "0"},
	} {
		_, err := mailconf.RenderPostfix(mailconf.Settings{tc.key: tc.value}, ucsPostfix())
		var se *mailconf.SettingError
		if !errors.As(err, &se) || se.Key != tc.key {
			t.Errorf("%s=%q: %v, want a SettingError naming %s", tc.key, tc.value, err, tc.key)
		}
	}
	// relayauth without credentials names mail/relayauth.
	_, err := mailconf.RenderPostfix(mailconf.Settings{mailconf.KeyRelayHost: "relay.example.net", mailconf.KeyRelayAuth: "yes"}, ucsPostfix())
	if err == nil || !strings.Contains(err.Error(), mailconf.KeyRelayAuth) {
		t.Errorf("relayauth without credentials: %v", err)
	}
	// Without the directory a local archive address cannot be checked.
	pf := ucsPostfix()
	pf.Directory = nil
	if _, err := mailconf.RenderPostfix(mailconf.Settings{mailconf.KeyArchiveFolder: "alice@example.org"}, pf); err == nil {
		t.Error("archive address accepted without a directory to check it in")
	}
}

func TestRenderPostfixSettings(t *testing.T) {
	render := func(s mailconf.Settings, params func(*mailconf.Postfix)) string {
		t.Helper()
		pf := ucsPostfix()
		if params != nil {
			params(&pf)
		}
		p, err := mailconf.RenderPostfix(s, pf)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range p.Files {
			if strings.HasSuffix(f.Path, "/main.cf") {
				return string(f.Data)
			}
		}
		t.Fatal("no main.cf")
		return ""
	}
	creds := func(p *mailconf.Postfix) { p.RelayCredentials = "u:p" }
	for _, tc := range []struct {
		s            mailconf.Settings
		params       func(*mailconf.Postfix)
		want, absent []string
	}{
		{mailconf.Settings{}, nil, []string{"# message_size_limit = 10240000 (Postfix's default)", "smtp_tls_security_level = may", "relayhost =\n"},
			[]string{"always_bcc", "soft_bounce", "smtp_sasl_auth_enable"}},
		{mailconf.Settings{mailconf.KeyMessageSizeLimit: "0"}, nil, []string{"message_size_limit = 0\n"}, nil},
		// 14.7.1: encrypt towards an authenticated relay ...
		{mailconf.Settings{mailconf.KeyRelayHost: "relay.example.net", mailconf.KeyRelayAuth: "yes"}, creds,
			[]string{"smtp_tls_security_level = encrypt", "smtp_sasl_password_maps = hash:/etc/postfix/smtp_auth"}, nil},
		// ... unless the client level is none.
		{mailconf.Settings{mailconf.KeyRelayHost: "relay.example.net", mailconf.KeyRelayAuth: "yes", mailconf.KeyTLSClientLevel: "none"}, creds,
			[]string{"smtp_tls_security_level = none"}, []string{"encrypt"}},
		// relayauth without a relay host authenticates nowhere.
		{mailconf.Settings{mailconf.KeyRelayAuth: "yes"}, nil, nil, []string{"smtp_sasl_auth_enable"}},
		// An external archive address needs no directory entry.
		{mailconf.Settings{mailconf.KeyArchiveFolder: "archive@elsewhere.test"}, nil, []string{"always_bcc = archive@elsewhere.test"}, nil},
		{mailconf.Settings{mailconf.KeyArchiveFolder: "team@example.org"}, nil, []string{"always_bcc = team@example.org"}, nil},
	} {
		got := render(tc.s, tc.params)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%v: main.cf lacks %q", tc.s, w)
			}
		}
		for _, a := range tc.absent {
			if strings.Contains(got, a) {
				t.Errorf("%v: main.cf has %q", tc.s, a)
			}
		}
	}
}
