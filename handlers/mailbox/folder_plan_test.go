package mailbox_test

import (
	"strings"
	"testing"

	"mailsync/event"
	"mailsync/handlers/mailbox"
)

// The shared folder rules of PlanFor, from folderState (reference §2).
func TestPlanForFolders(t *testing.T) {
	l, err := mailbox.NewLayout("/spool/%Ld/%Ln")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := mailbox.NewLayout("/public/%Ld/%Ln")
	if err != nil {
		t.Fatal(err)
	}
	folder := func(addr, hs string, acl ...string) *mailbox.State {
		a := event.Attrs{event.AttrObjectClass: {"univentionMailSharedFolder"}, event.AttrCN: {"team@example.org"}, event.AttrACL: acl}
		if addr != "" {
			a[event.AttrPrimaryAddress] = []string{addr}
		}
		if hs != "" {
			a[event.AttrHomeServer] = []string{hs}
		}
		st, ok := mailbox.StateOf(event.Entry{UUID: "f1", DN: "cn=f,dc=x", Kind: event.KindFolder, Attrs: a})
		if !ok {
			t.Fatal("a folder has no state")
		}
		return &st
	}
	home := func(addr string) mailbox.Home {
		return mailbox.Home{Path: "/spool/example.org/" + strings.TrimSuffix(addr, "@example.org"), Address: addr,
			Owner: mailbox.Owner{UUID: "f1", DN: "cn=f,dc=x", Address: addr}}
	}
	at := func(addr string) *mailbox.Home { h := home(addr); return &h }
	// The public folder's home, its marker naming the key "public/<cn>".
	public := mailbox.Home{Path: "/public/example.org/team", Address: "public/team@example.org",
		Owner: mailbox.Owner{UUID: "f1", DN: "cn=f,dc=x", Address: "public/team@example.org"}}
	const me = "mail.example.org"
	for _, c := range []struct {
		name string
		in   mailbox.Input
		want string
	}{
		{"created on its home server, with its ACL",
			mailbox.Input{Current: folder("team@example.org", me, "alice@example.org read")},
			"create mailbox of team@example.org at /spool/example.org/team; set the ACL of shared folder team@example.org: alice@example.org=read (reference §1.3 branch 1)"},
		{"homed on another host: nothing here",
			mailbox.Input{Current: folder("team@example.org", "other.example.org")},
			"nothing to do"},
		{"no home server: served nowhere (a user would be served everywhere)",
			mailbox.Input{Current: folder("team@example.org", "")},
			"nothing to do"},
		{"rename=no: an address change still renames",
			mailbox.Input{Current: folder("crew@example.org", me), Applied: folder("team@example.org", me), Homes: []mailbox.Home{home("team@example.org")}},
			"move /spool/example.org/team -> /spool/example.org/crew, mail kept; set the ACL of shared folder crew@example.org: no entries (reference §1.3 branch 4)"},
		{"only the ACL changed",
			mailbox.Input{Current: folder("team@example.org", me, "bob@example.org write", "alice@example.org none"), Applied: folder("team@example.org", me, "alice@example.org read"),
				Homes: []mailbox.Home{home("team@example.org")}, Target: at("team@example.org")},
			"set the ACL of shared folder team@example.org: bob@example.org=write"},
		{"address removed, still homed here: the mail moves into the public namespace, which then serves it",
			mailbox.Input{Current: folder("", me, "alice@example.org read"), Applied: folder("team@example.org", me, "alice@example.org read"), Homes: []mailbox.Home{home("team@example.org")}},
			"move /spool/example.org/team -> /public/example.org/team, mail kept; serve public folder team@example.org (Dovecot namespace team@example.org/); " +
				"set the ACL of public folder team@example.org/INBOX: alice@example.org=read (reference §1.3 branch 4)"},
		{"address added: no longer served publicly, then the mail moves into the private mailbox",
			mailbox.Input{Current: folder("team@example.org", me), Applied: folder("", me), Homes: []mailbox.Home{public}},
			"stop serving public folder team@example.org; move /public/example.org/team -> /spool/example.org/team, mail kept; " +
				"set the ACL of shared folder team@example.org: no entries (reference §1.3 branch 4)"},
		{"public folder created on its home server: the maildir, then the namespace, then the ACL",
			mailbox.Input{Current: folder("", me, "alice@example.org read")},
			"create public folder team@example.org at /public/example.org/team; serve public folder team@example.org (Dovecot namespace team@example.org/); " +
				"set the ACL of public folder team@example.org/INBOX: alice@example.org=read (reference §1.3 branch 1)"},
		{"public folder homed on another host: nothing here",
			mailbox.Input{Current: folder("", "other.example.org")},
			"nothing to do"},
		{"public folder without a home server: nothing anywhere",
			mailbox.Input{Current: folder("", "")},
			"nothing to do"},
		{"public folder settled",
			mailbox.Input{Current: folder("", me, "alice@example.org read"), Applied: folder("", me, "alice@example.org read"),
				Homes: []mailbox.Home{public}, Target: &public},
			"nothing to do"},
		{"public folder, only the ACL changed",
			mailbox.Input{Current: folder("", me, "bob@example.org all"), Applied: folder("", me, "alice@example.org read"),
				Homes: []mailbox.Home{public}, Target: &public},
			"set the ACL of public folder team@example.org/INBOX: bob@example.org=all"},
		{"public folder whose home went: made again and served",
			mailbox.Input{Current: folder("", me), Applied: folder("", me)},
			"create public folder team@example.org at /public/example.org/team; serve public folder team@example.org (Dovecot namespace team@example.org/); " +
				"set the ACL of public folder team@example.org/INBOX: no entries"},
		{"settled: nothing to do",
			mailbox.Input{Current: folder("team@example.org", me, "alice@example.org read"), Applied: folder("team@example.org", me, "alice@example.org read"),
				Homes: []mailbox.Home{home("team@example.org")}, Target: at("team@example.org")},
			"nothing to do"},
	} {
		c.in.UUID = "f1"
		p := mailbox.PlanFor(c.in, mailbox.Settings{Host: me, Rename: false, Delete: true, MoveOnHomeChange: true, Layout: l, Public: pub})
		if got := p.String(); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}

	// A public folder deleted, or homed on another host now: Dovecot stops
	// serving it first; its mail goes only with delete=yes.
	for _, del := range []bool{false, true} {
		for _, c := range []struct {
			name string
			cur  *mailbox.State
		}{{"deleted", nil}, {"homed elsewhere", folder("", "other.example.org")}} {
			p := mailbox.PlanFor(mailbox.Input{UUID: "f1", Current: c.cur, Applied: folder("", me), Homes: []mailbox.Home{public}},
				mailbox.Settings{Host: me, Delete: del, Layout: l, Public: pub})
			want := "stop serving public folder team@example.org; keep /public/example.org/team on disk (mail/dovecot/mailbox/delete=no); public folder team@example.org is no longer served (reference §1.3 branch 2)"
			if del {
				want = "stop serving public folder team@example.org; delete /public/example.org/team (to the trash, then removed) (reference §1.3 branch 2)"
			}
			if got := p.String(); got != want {
				t.Errorf("public folder %s, delete=%v:\n got %s\nwant %s", c.name, del, got, want)
			}
		}
	}

	// A cn Dovecot would expand in the namespace's location, or a public
	// folder on a host without a public home, refuses the entry, naming it.
	if st, _ := mailbox.StateOf(event.Entry{UUID: "f1", DN: "cn=f,dc=x", Kind: event.KindFolder,
		Attrs: event.Attrs{event.AttrCN: {"a$x@example.org"}, event.AttrHomeServer: {me}}}); st.Refused == nil {
		t.Errorf("cn a$x@example.org accepted")
	} else if p := mailbox.PlanFor(mailbox.Input{UUID: "f1", Current: &st}, mailbox.Settings{Host: me, Layout: l, Public: pub}); p.Refused == nil ||
		!strings.Contains(p.Refused.Error(), "cn=f,dc=x") || !strings.Contains(p.Refused.Error(), "a$x@example.org") {
		t.Errorf("cn a$x@example.org: %v", p.Refused)
	}
	if p := mailbox.PlanFor(mailbox.Input{UUID: "f1", Current: folder("", me)}, mailbox.Settings{Host: me, Layout: l}); p.Refused == nil ||
		!strings.Contains(p.Refused.Error(), "dovecot.public_home") {
		t.Errorf("no public home: %v", p.Refused)
	}

	// An ACL the folder rules cannot read refuses the entry, naming it.
	p := mailbox.PlanFor(mailbox.Input{UUID: "f1", Current: folder("team@example.org", me, "alice@example.org admin")},
		mailbox.Settings{Host: me, Layout: l})
	if p.Refused == nil || !strings.Contains(p.Refused.Error(), "cn=f,dc=x") || !strings.Contains(p.Refused.Error(), `unknown right "admin"`) || len(p.Steps) != 0 {
		t.Errorf("bad ACL: %v, %d steps", p.Refused, len(p.Steps))
	}
}
