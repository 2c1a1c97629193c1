package mailconf_test

import (
	"testing"

	"mailsync/internal/testenv"
	"mailsync/mailconf"
)

// Mail to a shared folder's address goes through Postfix (its maps from
// the directory) and Dovecot's LMTP into the folder's own INBOX; a folder
// homed on another host is routed to that host.
func TestMailFlowSharedFolder(t *testing.T) {
	e := startMailWith(t, mailconf.Settings{mailconf.KeyMyNetworks: "127.0.0.1/32"}, testenv.DovecotOptions{SharedFolders: true})
	l := e.ldap
	for _, f := range []struct{ name, home string }{{"team", fqdn}, {"far", otherHost}} {
		l.Add(t, "cn="+f.name+","+l.BaseDN, map[string][]string{"objectClass": {"univentionMailSharedFolder"},
			"cn": {f.name}, "mailPrimaryAddress": {f.name + "@" + domain}, "univentionMailHomeServer": {f.home}})
	}
	e.pipe.Settled(t)
	if _, err := e.configure(e.settings); err != nil {
		t.Fatal(err)
	}
	e.send(t, e.pf.SMTP, testenv.Mail{To: []string{"team@" + domain}, Subject: "to a shared folder"})
	e.inbox(t, "team@"+domain, "to a shared folder")
	e.send(t, e.pf.SMTP, testenv.Mail{To: []string{"far@" + domain}, Subject: "to a folder homed elsewhere"})
	if m := e.home.WaitFor(t, "to a folder homed elsewhere", 20e9); len(m.To) != 1 || m.To[0] != "far@"+domain {
		t.Errorf("home server sink got RCPT %v, want far@%s", m.To, domain)
	}
}
