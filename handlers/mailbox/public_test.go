package mailbox_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailsync/event"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
)

// TestPublicFolders runs UCS's ucs-test 43 scenarios of shared folders
// without an address (reference §2) through the whole pipeline against
// the real Dovecot, under delete=no and delete=yes (rename=no: a folder's
// move happens whatever it says): a public folder is made on its home
// server only, in <public home>/<domain>/<name>, and Dovecot serves it as
// "<name>@<domain>/INBOX" to a user its ACL lets read, not to another;
// adding the address moves the mail into the private mailbox (found under
// shared/<address>/, the public namespace gone), removing it moves the
// mail back (found in the public namespace again); a deleted folder stops
// being served and its mail goes only with delete=yes.
func TestPublicFolders(t *testing.T) {
	t.Parallel()
	for _, pol := range []policy{{false, false}, {false, true}} {
		t.Run(pol.String(), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, pol, testenv.DovecotOptions{SharedFolders: true}, true)
			l := e.ldap
			l.AddUser(t, "alice", "alice@example.org", nil)
			l.AddUser(t, "bob", "bob@example.org", nil)
			folder := func(name, home string, acl ...string) string {
				return addFolder(t, l, name+"@example.org", "", home, acl...)
			}
			pubHome := func(name string) string { return filepath.Join(e.dc.PublicHome, "example.org", name) }
			seq := e.lastSeq(t)
			board := folder("board", host, "alice@example.org read")
			folder("far", "other.example.org", "alice@example.org read")
			folder("nohome", "", "alice@example.org read")
			e.created(t, "alice@example.org", "bob@example.org")
			e.settledAfter(t, seq, 5)
			if o, ok := mailbox.ReadOwner(pubHome("board")); !ok || o.DN != board || o.Address != "public/board@example.org" {
				t.Fatalf("public folder board: owner %+v, %v", o, ok)
			}
			for _, n := range []string{"far", "nohome"} {
				if dirExists(pubHome(n)) {
					t.Errorf("public folder %s was created here", n)
				}
				e.selects(t, "alice@example.org", n+"@example.org/INBOX", -1)
			}
			// Mail in the folder, as a user with the right would put it.
			e.putMail(t, filepath.Join(pubHome("board"), ".INBOX"), "for the board")
			e.selects(t, "alice@example.org", "board@example.org/INBOX", 1)
			e.selects(t, "bob@example.org", "board@example.org/INBOX", -1)

			// The address added: the mail moves into the private mailbox.
			seq = e.lastSeq(t)
			l.Modify(t, board, map[string][]string{"mailPrimaryAddress": {"board@example.org"}})
			e.settledAfter(t, seq, 1)
			if dirExists(pubHome("board")) {
				t.Errorf("the public folder %s is still there", pubHome("board"))
			}
			e.canRead(t, "alice@example.org", "board@example.org", 1)
			e.canRead(t, "bob@example.org", "board@example.org", -1)
			e.selects(t, "alice@example.org", "board@example.org/INBOX", -1)
			e.dc.Deliver(t, "board@example.org", "to the address")
			e.canRead(t, "alice@example.org", "board@example.org", 2)

			// The address removed: the mail moves back into the public
			// namespace, all of it, and Dovecot serves it there again.
			seq = e.lastSeq(t)
			l.Modify(t, board, map[string][]string{"mailPrimaryAddress": {}})
			e.settledAfter(t, seq, 1)
			if dirExists(e.dc.Home("board@example.org")) {
				t.Errorf("the private mailbox %s is still there", e.dc.Home("board@example.org"))
			}
			e.selects(t, "alice@example.org", "board@example.org/INBOX", 2)
			e.selects(t, "bob@example.org", "board@example.org/INBOX", -1)

			// Deleted: no longer served; the mail goes only with delete=yes.
			seq = e.lastSeq(t)
			l.Delete(t, board)
			e.settledAfter(t, seq, 1)
			e.selects(t, "alice@example.org", "board@example.org/INBOX", -1)
			if got := dirExists(pubHome("board")); got == pol.delete {
				t.Errorf("deleted public folder: the directory exists: %v, want %v", got, !pol.delete)
			} else if got {
				if n := mailFiles(t, pubHome("board")); n != 2 {
					t.Errorf("deleted public folder kept with %d messages, want 2", n)
				}
			}
			if len(deadLetters(t, e.p)) > 0 {
				t.Errorf("dead letters: %+v", deadLetters(t, e.p))
			}
		})
	}
}

// selects checks what user sees of mailbox over IMAP: n messages, or with
// n < 0 that SELECT is refused.
func (e *env) selects(t *testing.T, user, mailbox string, n int) {
	t.Helper()
	c, err := e.dc.IMAPReader().Dial(context.Background(), user, "secret")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data, err := c.Select(mailbox, nil).Wait()
	switch {
	case n < 0 && err == nil:
		t.Errorf("%s can SELECT %s without a right", user, mailbox)
	case n >= 0 && err != nil:
		t.Errorf("%s cannot SELECT %s: %v\n%s", user, mailbox, err, e.dc.Log())
	case n >= 0 && int(data.NumMessages) != n:
		t.Errorf("%s sees %d messages in %s, want %d", user, data.NumMessages, mailbox, n)
	}
}

// putMail writes a message into the maildir folder dir as Dovecot's mail
// user would deliver it.
func (e *env) putMail(t *testing.T, dir, subject string) {
	t.Helper()
	p := filepath.Join(dir, "new", fmt.Sprintf("%d.test", len(subject)))
	msg := "From: a@example.org\r\nTo: folder@example.org\r\nSubject: " + subject + "\r\n\r\nhello\r\n"
	if err := os.WriteFile(p, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, e.dc.UID, e.dc.GID); err != nil {
		t.Fatal(err)
	}
}

// TestPublicMoveCrash: a crash at any step of the move between a folder's
// private mailbox and the public namespace (rename or copy across
// filesystems, reshape, marker, flush) leaves an intent that Load and the
// redelivered event complete: the mail is found at the new place over
// IMAP, in one place only, both ways.
func TestPublicMoveCrash(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: false, delete: true}, testenv.DovecotOptions{SharedFolders: true}, false)
	e.ldap.AddUser(t, "alice", "alice@example.org", nil)
	ctx := context.Background()
	type tc struct {
		step  string
		cross bool
	}
	cases := []tc{{"move:intent", false}, {"move:kicked", false}, {"move:home-renamed", false}, {"move:marked", false},
		{"move:flushed", false}, {"move:home-copied", true}, {"move:home-swapped", true}}
	for i, c := range cases {
		name := fmt.Sprintf("%s cross-fs=%v", c.step, c.cross)
		cn := fmt.Sprintf("desk%02d@example.org", i)
		uuid := fmt.Sprintf("22222222-0000-0000-0000-%012d", i)
		dn := "cn=" + cn + "," + e.ldap.BaseDN
		attrs := func(addr string) event.Attrs {
			a := event.Attrs{event.AttrObjectClass: {"univentionMailSharedFolder"}, event.AttrCN: {cn},
				event.AttrHomeServer: {host}, event.AttrACL: {"alice@example.org read"}}
			if addr != "" {
				a[event.AttrPrimaryAddress] = []string{addr}
			}
			return a
		}
		e.ldap.Add(t, dn, attrs(cn))
		if err := e.h.Handle(ctx, event.Event{Op: event.OpAdd, Kind: event.KindFolder, UUID: uuid, DN: dn, New: attrs(cn)}); err != nil {
			t.Fatalf("%s: create: %v", name, err)
		}
		e.dc.Deliver(t, cn, "one")
		e.dc.Deliver(t, cn, "two")
		for _, toPublic := range []bool{true, false} {
			ev := event.Event{Op: event.OpModify, Kind: event.KindFolder, UUID: uuid, DN: dn, Old: attrs(cn), New: attrs("")}
			if toPublic {
				e.ldap.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {}})
			} else {
				e.ldap.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {cn}})
				ev.Old, ev.New = attrs(""), attrs(cn)
			}
			if err := e.crashAndRecover(t, ev, c.step, c.cross); err != nil {
				t.Errorf("%s, to public %v: %v", name, toPublic, err)
				continue
			}
			pub := filepath.Join(e.dc.PublicHome, "example.org", strings.TrimSuffix(cn, "@example.org"))
			now, gone := pub, e.dc.Home(cn)
			if !toPublic {
				now, gone = gone, now
			}
			if dirExists(gone) {
				t.Errorf("%s, to public %v: %s is still there", name, toPublic, gone)
			}
			if n := mailFiles(t, now); n != 2 {
				t.Errorf("%s, to public %v: %d message files at %s, want 2 (in exactly one place)", name, toPublic, n, now)
			}
			if toPublic {
				e.selects(t, "alice@example.org", cn+"/INBOX", 2)
			} else {
				e.canRead(t, "alice@example.org", cn, 2)
			}
		}
	}
}
