package mailbox_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"mailsync/internal/testenv"
)

// TestDecisionTable drives every row of reference §1.3's table through
// slapd, the listener, JetStream and the handler (rename=yes, delete=yes so
// every delete is visible) on the host mail.example.org, and checks the
// spool. States: "created" = an empty mailbox with the default folders;
// "kept" = the one message it had is still there; "gone" = no home.
func TestDecisionTable(t *testing.T) {
	t.Parallel()
	const other = "other.example.org"
	e := newEnv(t, policy{rename: true, delete: true}, testenv.DovecotOptions{}, true)
	l := e.ldap
	type row struct {
		name   string
		addr   string // "" = no address; otherwise uid@example.org
		hs     string
		before string // "add": the change adds the user; "mail": exists with 1 message; "plant": exists, a home planted on disk; "": exists
		change func(t *testing.T, dn, uid string)
		want   map[string]string // address -> created | kept | gone
	}
	addr := func(uid string) string { return uid + "@example.org" }
	set := func(attr string, v ...string) func(*testing.T, string, string) {
		return func(t *testing.T, dn, _ string) { l.Modify(t, dn, map[string][]string{attr: v}) }
	}
	rows := []row{
		{name: "created, no home server", addr: "y", before: "add", want: map[string]string{"r00": "created"}},
		{name: "created, home server this host", addr: "y", hs: host, before: "add", want: map[string]string{"r01": "created"}},
		{name: "created, home server another host", addr: "y", hs: other, before: "add", want: map[string]string{"r02": "gone"}},
		{name: "created without address", before: "add", want: map[string]string{"r03": "gone"}},
		{name: "deleted", addr: "y", before: "mail", change: func(t *testing.T, dn, _ string) { l.Delete(t, dn) }, want: map[string]string{"r04": "gone"}},
		{name: "address removed", addr: "y", before: "mail", change: set("mailPrimaryAddress"), want: map[string]string{"r05": "gone"}},
		{name: "home server this host -> another", addr: "y", hs: host, before: "mail", change: set("univentionMailHomeServer", other), want: map[string]string{"r06": "gone"}},
		{name: "home server empty -> another", addr: "y", before: "mail", change: set("univentionMailHomeServer", other), want: map[string]string{"r07": "gone"}},
		{name: "home server and address changed, away", addr: "y", hs: host, before: "mail",
			change: func(t *testing.T, dn, uid string) {
				l.Modify(t, dn, map[string][]string{"univentionMailHomeServer": {other}, "mailPrimaryAddress": {addr(uid + "new")}})
			}, want: map[string]string{"r08": "gone", "r08new": "gone"}},
		{name: "address added", before: "", change: func(t *testing.T, dn, uid string) {
			l.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {addr(uid)}})
		}, want: map[string]string{"r09": "created"}},
		{name: "address changed", addr: "y", before: "mail", change: func(t *testing.T, dn, uid string) {
			l.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {addr(uid + "new")}})
		}, want: map[string]string{"r10": "gone", "r10new": "kept"}},
		{name: "address case changed only", addr: "y", before: "mail", change: set("mailPrimaryAddress", "R11@EXAMPLE.Org"), want: map[string]string{"r11": "kept"}},
		{name: "home server another -> this host", addr: "y", hs: other, before: "", change: set("univentionMailHomeServer", host), want: map[string]string{"r12": "created"}},
		{name: "home server another -> empty", addr: "y", hs: other, before: "", change: set("univentionMailHomeServer"), want: map[string]string{"r13": "created"}},
		{name: "home server and address changed, towards here", addr: "y", hs: other, before: "",
			change: func(t *testing.T, dn, uid string) {
				l.Modify(t, dn, map[string][]string{"univentionMailHomeServer": {host}, "mailPrimaryAddress": {addr(uid + "new")}})
			}, want: map[string]string{"r14": "gone", "r14new": "created"}},
		{name: "home server empty -> this host", addr: "y", before: "mail", change: set("univentionMailHomeServer", host), want: map[string]string{"r15": "kept"}},
		{name: "home server this host -> empty", addr: "y", hs: host, before: "mail", change: set("univentionMailHomeServer"), want: map[string]string{"r16": "kept"}},
		{name: "username modrdn", addr: "y", before: "mail", change: func(t *testing.T, dn, uid string) { l.ModRDN(t, dn, "uid="+uid+"x", "") }, want: map[string]string{"r17": "kept"}},
		{name: "other attribute changed", addr: "y", before: "mail", change: set("mailAlternativeAddress", "alias17@example.org"), want: map[string]string{"r18": "kept"}},
		{name: "deleted, homed on another host", addr: "y", hs: other, before: "plant", change: func(t *testing.T, dn, _ string) { l.Delete(t, dn) }, want: map[string]string{"r19": "kept"}},
		{name: "address changed, homed on another host", addr: "y", hs: other, before: "plant", change: func(t *testing.T, dn, uid string) {
			l.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {addr(uid + "new")}})
		}, want: map[string]string{"r20": "kept", "r20new": "gone"}},
	}
	add := func(i int, r row) string {
		uid := fmt.Sprintf("r%02d", i)
		extra := map[string][]string{}
		if r.hs != "" {
			extra["univentionMailHomeServer"] = []string{r.hs}
		}
		a := ""
		if r.addr != "" {
			a = addr(uid)
		}
		return l.AddUser(t, uid, a, extra)
	}
	dns := make([]string, len(rows))
	for i, r := range rows {
		if r.before != "add" {
			dns[i] = add(i, r)
		}
	}
	e.created(t, "r04@example.org", "r05@example.org", "r06@example.org", "r07@example.org", "r08@example.org",
		"r10@example.org", "r11@example.org", "r15@example.org", "r16@example.org", "r17@example.org", "r18@example.org")
	for i, r := range rows {
		uid := fmt.Sprintf("r%02d", i)
		switch r.before {
		case "mail":
			e.dc.Deliver(t, addr(uid), "before")
		case "plant":
			cur := filepath.Join(e.dc.Home(addr(uid)), "Maildir", "cur")
			if err := os.MkdirAll(cur, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(cur, "1.planted:2,"), []byte("Subject: planted\r\n\r\nx\r\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	seq := e.lastSeq(t)
	for i, r := range rows {
		uid := fmt.Sprintf("r%02d", i)
		if r.before == "add" {
			add(i, r)
		} else {
			r.change(t, dns[i], uid)
		}
	}
	e.settledAfter(t, seq, len(rows))
	if dl := deadLetters(t, e.p); len(dl) > 0 {
		t.Errorf("dead letters: %+v", dl)
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			for uid, want := range r.want {
				home := e.dc.Home(addr(uid))
				var got string
				switch {
				case !dirExists(home):
					got = "gone"
				case mailFiles(t, home) == 1:
					got = "kept"
				case mailFiles(t, home) == 0 && dirExists(filepath.Join(home, "Maildir", ".Spam")) && dirExists(filepath.Join(home, "Maildir", ".Ham")):
					got = "created"
				default:
					got = fmt.Sprintf("%d messages", mailFiles(t, home))
				}
				if got != want {
					t.Errorf("%s: %s, want %s", home, got, want)
				}
			}
		})
	}
	// The moved mailbox is readable at its new address, with the defaults.
	if got := e.dc.MailboxSummary(t, "r10new@example.org"); got["INBOX"].Messages != 1 {
		t.Errorf("r10new over IMAP: %v", got)
	}
}
