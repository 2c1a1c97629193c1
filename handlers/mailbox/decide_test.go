package mailbox_test

import (
	"os"
	"strings"
	"testing"

	"mailsync/event"
	"mailsync/handlers/mailbox"
)

func attrs(addr, hs string) event.Attrs {
	a := event.Attrs{event.AttrObjectClass: {"univentionMail"}, event.AttrUID: {"u"}}
	if addr != "" {
		a[event.AttrPrimaryAddress] = []string{addr}
	}
	if hs != "" {
		a[event.AttrHomeServer] = []string{hs}
	}
	return a
}

// TestDecide is reference §1.3's table, row by row, seen from the host
// mail.example.org ("here"); other.example.org is another mail host.
func TestDecide(t *testing.T) {
	t.Parallel()
	const here, other = "mail.example.org", "other.example.org"
	add := func(a event.Attrs) event.Event { return event.Event{Op: event.OpAdd, New: a} }
	mod := func(o, n event.Attrs) event.Event { return event.Event{Op: event.OpModify, Old: o, New: n} }
	del := func(o event.Attrs) event.Event { return event.Event{Op: event.OpDelete, Old: o} }
	for _, tc := range []struct {
		name   string
		ev     event.Event
		action mailbox.Action
		branch int
	}{
		{"created, address set, no home server", add(attrs("a@x.org", "")), mailbox.Create, 1},
		{"created, home server this host", add(attrs("a@x.org", here)), mailbox.Create, 1},
		{"created, home server this host in upper case", add(attrs("a@x.org", "MAIL.Example.ORG")), mailbox.Create, 1},
		{"created, home server another host", add(attrs("a@x.org", other)), mailbox.None, 0},
		{"created without address", add(attrs("", "")), mailbox.None, 1},
		{"created, blank address", add(attrs("  ", "")), mailbox.None, 1},
		{"deleted, was responsible", del(attrs("a@x.org", "")), mailbox.Delete, 2},
		{"deleted, homed on another host", del(attrs("a@x.org", other)), mailbox.None, 0},
		{"deleted, had no address", del(attrs("", "")), mailbox.None, 0},
		{"address removed", mod(attrs("a@x.org", ""), attrs("", "")), mailbox.Delete, 2},
		{"home server this host -> another", mod(attrs("a@x.org", here), attrs("a@x.org", other)), mailbox.Delete, 2},
		{"home server empty -> another", mod(attrs("a@x.org", ""), attrs("a@x.org", other)), mailbox.Delete, 2},
		{"home server and address changed, away from here", mod(attrs("a@x.org", here), attrs("b@x.org", other)), mailbox.Delete, 2},
		{"address added", mod(attrs("", ""), attrs("a@x.org", "")), mailbox.Create, 3},
		{"address added, homed elsewhere", mod(attrs("", other), attrs("a@x.org", other)), mailbox.None, 0},
		{"address changed", mod(attrs("a@x.org", ""), attrs("b@x.org", "")), mailbox.Move, 4},
		{"address changed, home server this host", mod(attrs("a@x.org", here), attrs("b@x.org", here)), mailbox.Move, 4},
		{"address changed, home server '' -> this host", mod(attrs("a@x.org", ""), attrs("b@x.org", here)), mailbox.Move, 4},
		{"address case changed only", mod(attrs("A@x.org", ""), attrs("a@X.org", "")), mailbox.None, 0},
		{"address changed, homed elsewhere", mod(attrs("a@x.org", other), attrs("b@x.org", other)), mailbox.None, 0},
		{"home server another -> this host", mod(attrs("a@x.org", other), attrs("a@x.org", here)), mailbox.Create, 5},
		{"home server another -> empty", mod(attrs("a@x.org", other), attrs("a@x.org", "")), mailbox.Create, 5},
		{"home server and address changed, towards here", mod(attrs("a@x.org", other), attrs("b@x.org", here)), mailbox.Create, 5},
		{"home server empty -> this host", mod(attrs("a@x.org", ""), attrs("a@x.org", here)), mailbox.Create, 6},
		{"home server this host -> empty", mod(attrs("a@x.org", here), attrs("a@x.org", "")), mailbox.Create, 6},
		{"modrdn, address unchanged", event.Event{Op: event.OpModify, OldDN: "uid=a,ou=x", Old: attrs("a@x.org", ""), New: attrs("a@x.org", "")}, mailbox.None, 0},
		{"other attribute changed", mod(attrs("a@x.org", ""), func() event.Attrs {
			a := attrs("a@x.org", "")
			a[event.AttrAlternativeAddress] = []string{"alias@x.org"}
			return a
		}()), mailbox.None, 0},
		{"only first address value counts", mod(event.Attrs{event.AttrPrimaryAddress: {"a@x.org", "z@x.org"}}, event.Attrs{event.AttrPrimaryAddress: {"A@x.org", "y@x.org"}}), mailbox.None, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := mailbox.Decide(tc.ev, here)
			if d.Action != tc.action || d.Branch != tc.branch {
				t.Errorf("Decide = %v (branch %d), want %v (branch %d)", d.Action, d.Branch, tc.action, tc.branch)
			}
			if d.Old != strings.ToLower(d.Old) || d.New != strings.ToLower(d.New) {
				t.Errorf("addresses not lowercased: %+v", d)
			}
		})
	}
}

func TestValidateAddress(t *testing.T) {
	t.Parallel()
	long := func(n int) string { return strings.Repeat("a", n) }
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"alice@example.org", true},
		{"first.last+tag@sub.example.org", true},
		{long(64) + "@example.org", true},
		{long(65) + "@example.org", false},
		{"a@" + long(63) + "." + long(63) + "." + long(63) + "." + long(60), true}, // 254 octets
		{"ab@" + long(63) + "." + long(63) + "." + long(63) + "." + long(60), false},
		{"noat", false},
		{"two@at@example.org", false},
		{"@example.org", false},
		{"alice@", false},
		{"../etc@example.org", false},
		{"..@example.org", false},
		{".hidden@example.org", false},
		{"a..b@example.org", false},
		{"a/b@example.org", false},
		{"alice@../../etc", false},
		{"alice@example.org/..", false},
		{"nul\x00@example.org", false},
		{"tab\t@example.org", false},
		{"nl\n@example.org", false},
		{"del\x7f@example.org", false},
		{"sp ace@example.org", false},
		{"bad\xff@example.org", false},
	} {
		_, _, err := mailbox.ValidateAddress(tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateAddress(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

func TestLayout(t *testing.T) {
	t.Parallel()
	l, err := mailbox.NewLayout("/var/spool/dovecot/private/%Ld/%Ln")
	if err != nil {
		t.Fatal(err)
	}
	if l.Root != "/var/spool/dovecot/private" {
		t.Errorf("root = %s", l.Root)
	}
	p, err := l.Path("alice", "example.org")
	if err != nil || p != "/var/spool/dovecot/private/example.org/alice" {
		t.Errorf("Path = %q, %v", p, err)
	}
	for _, bad := range []string{"relative/%Ln", "/%Ld/%Ln", "/var/spool/fixed"} {
		if _, err := mailbox.NewLayout(bad); err == nil {
			t.Errorf("NewLayout(%q) accepted", bad)
		}
	}
	// Escapes are caught even if a caller skipped ValidateAddress.
	if _, err := l.Path("..", ".."); err == nil {
		t.Errorf("Path(.., ..) accepted")
	}
	// A symlink inside the root that leads out is refused; one that stays in is fine.
	root := t.TempDir()
	outside := t.TempDir()
	l, _ = mailbox.NewLayout(root + "/%Ld/%Ln")
	if err := os.Symlink(outside, root+"/evil.org"); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(root+"/real.org", 0o700)
	if err := os.Symlink(root+"/real.org", root+"/alias.org"); err != nil {
		t.Fatal(err)
	}
	if err := l.Confine(root + "/evil.org/bob"); err == nil {
		t.Errorf("Confine accepted a path through a symlink leading out")
	}
	if err := l.Confine(root + "/alias.org/bob"); err != nil {
		t.Errorf("Confine refused a symlink staying inside: %v", err)
	}
}

// TestDecideMoveOnHomeChange: with move_on_homeserver_change only a change
// from this host to another named host becomes MovedAway; every other row
// keeps UCS's answer.
func TestDecideMoveOnHomeChange(t *testing.T) {
	t.Parallel()
	const here, other = "mail.example.org", "other.example.org"
	mod := func(o, n event.Attrs) event.Event { return event.Event{Op: event.OpModify, Old: o, New: n} }
	move := mailbox.Policy{MoveOnHomeChange: true}
	for _, tc := range []struct {
		name     string
		ev       event.Event
		action   mailbox.Action
		old, new string
	}{
		{"this host -> another", mod(attrs("a@x.org", here), attrs("a@x.org", other)), mailbox.MovedAway, "a@x.org", "a@x.org"},
		{"this host -> another, address changed too", mod(attrs("a@x.org", here), attrs("b@x.org", other)), mailbox.MovedAway, "a@x.org", "b@x.org"},
		{"empty -> another: every host had one", mod(attrs("a@x.org", ""), attrs("a@x.org", other)), mailbox.Delete, "a@x.org", ""},
		{"this host -> another, address removed", mod(attrs("a@x.org", here), attrs("", other)), mailbox.Delete, "a@x.org", ""},
		{"another -> this host", mod(attrs("a@x.org", other), attrs("a@x.org", here)), mailbox.Create, "", "a@x.org"},
		{"deleted", event.Event{Op: event.OpDelete, Old: attrs("a@x.org", here)}, mailbox.Delete, "a@x.org", ""},
	} {
		d := mailbox.DecideWith(tc.ev, here, move)
		if d.Action != tc.action || d.Old != tc.old || d.New != tc.new || (d.Action == mailbox.MovedAway) != (d.To == other) {
			t.Errorf("%s: %+v, want %v %q -> %q", tc.name, d, tc.action, tc.old, tc.new)
		}
		if u := mailbox.Decide(tc.ev, here); u.Action == mailbox.MovedAway {
			t.Errorf("%s: Decide without the policy answered %v", tc.name, u.Action)
		}
	}
}
