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
	folder := func(addr, hs string, acl ...string) *mailbox.State {
		a := event.Attrs{event.AttrObjectClass: {"univentionMailSharedFolder"}, event.AttrACL: acl}
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
		{"address removed, still homed here: kept even with delete=yes (UCS makes it public)",
			mailbox.Input{Current: folder("", me), Applied: folder("team@example.org", me), Homes: []mailbox.Home{home("team@example.org")}},
			"keep /spool/example.org/team on disk (mail/dovecot/mailbox/delete=no); team@example.org is logged out and the auth cache flushed (reference §1.3 branch 2)"},
		{"settled: nothing to do",
			mailbox.Input{Current: folder("team@example.org", me, "alice@example.org read"), Applied: folder("team@example.org", me, "alice@example.org read"),
				Homes: []mailbox.Home{home("team@example.org")}, Target: at("team@example.org")},
			"nothing to do"},
	} {
		c.in.UUID = "f1"
		p := mailbox.PlanFor(c.in, mailbox.Settings{Host: me, Rename: false, Delete: true, MoveOnHomeChange: true, Layout: l})
		if got := p.String(); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}

	// An ACL the folder rules cannot read refuses the entry, naming it.
	p := mailbox.PlanFor(mailbox.Input{UUID: "f1", Current: folder("team@example.org", me, "alice@example.org admin")},
		mailbox.Settings{Host: me, Layout: l})
	if p.Refused == nil || !strings.Contains(p.Refused.Error(), "cn=f,dc=x") || !strings.Contains(p.Refused.Error(), `unknown right "admin"`) || len(p.Steps) != 0 {
		t.Errorf("bad ACL: %v, %d steps", p.Refused, len(p.Steps))
	}
}
