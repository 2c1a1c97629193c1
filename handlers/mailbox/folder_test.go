package mailbox_test

import (
	"context"
	"strings"
	"testing"

	"mailsync/event"
	"mailsync/fault"

	"mailsync/internal/testenv"
)

// TestSharedFolders runs UCS's ucs-test 43 shared-folder scenarios
// (reference §2, §6) through the whole pipeline, in each cell of Table
// 14.4: a folder is created on its home server only (not when homed on
// another host, not without a home server); mail delivered over LMTP is
// read by a user its ACL grants read, not by one without; an ACL change
// takes effect; an address change renames under every cell and the mail is
// found at the new name; a deleted folder, or one homed elsewhere now, goes
// only with delete=yes.
func TestSharedFolders(t *testing.T) {
	t.Parallel()
	for _, pol := range cells {
		t.Run(pol.String(), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, pol, testenv.DovecotOptions{SharedFolders: true}, true)
			l := e.ldap
			l.AddUser(t, "alice", "alice@example.org", nil)
			l.AddUser(t, "bob", "bob@example.org", nil)
			folder := func(name, home string, acl ...string) string {
				return addFolder(t, l, name+"@example.org", name+"@example.org", home, acl...)
			}
			team := folder("team", host, "alice@example.org read")
			gone := folder("gone", host)
			moving := folder("moving", host)
			folder("far", "other.example.org")
			folder("nohome", "")
			e.created(t, "alice@example.org", "bob@example.org", "team@example.org", "gone@example.org", "moving@example.org")
			for _, a := range []string{"far@example.org", "nohome@example.org"} {
				if dirExists(e.dc.Home(a)) {
					t.Errorf("folder %s was created here: %s", a, e.dc.Home(a))
				}
			}
			e.dc.Deliver(t, "team@example.org", "for the team")
			e.canRead(t, "alice@example.org", "team@example.org", 1)
			e.canRead(t, "bob@example.org", "team@example.org", -1)

			// The ACL changes: bob may read, alice's entry goes.
			seq := e.lastSeq(t)
			l.Modify(t, team, map[string][]string{"univentionMailACL": {"bob@example.org read"}})
			e.settledAfter(t, seq, 1)
			e.canRead(t, "bob@example.org", "team@example.org", 1)
			e.canRead(t, "alice@example.org", "team@example.org", -1)

			// An address change renames under every cell.
			seq = e.lastSeq(t)
			l.Modify(t, team, map[string][]string{"mailPrimaryAddress": {"crew@example.org"}})
			e.settledAfter(t, seq, 1)
			if dirExists(e.dc.Home("team@example.org")) {
				t.Errorf("the old folder %s is still there", e.dc.Home("team@example.org"))
			}
			e.canRead(t, "bob@example.org", "crew@example.org", 1)
			e.dc.Deliver(t, "crew@example.org", "to the new name")
			e.canRead(t, "bob@example.org", "crew@example.org", 2)

			// The address removed: the folder becomes public, its mail
			// moved into the public namespace (TestPublicFolders).
			seq = e.lastSeq(t)
			l.Modify(t, team, map[string][]string{"mailPrimaryAddress": {}})
			e.settledAfter(t, seq, 1)
			e.selects(t, "bob@example.org", "team@example.org/INBOX", 2)

			// Deleted, or homed on another host now: the folder goes only
			// with delete=yes (its mail does not move with it).
			seq = e.lastSeq(t)
			l.Delete(t, gone)
			l.Modify(t, moving, map[string][]string{"univentionMailHomeServer": {"other.example.org"}})
			e.settledAfter(t, seq, 2)
			for _, a := range []string{"gone@example.org", "moving@example.org"} {
				if got := dirExists(e.dc.Home(a)); got == pol.delete {
					t.Errorf("%s: the directory exists: %v, want %v", a, got, !pol.delete)
				}
			}
			if len(deadLetters(t, e.p)) > 0 {
				t.Errorf("dead letters: %+v", deadLetters(t, e.p))
			}
		})
	}
}

// addFolder adds a shared folder entry: cn (UDM's "<name>@<maildomain>"),
// addr ("": none, a public folder), home server ("": none) and ACL.
func addFolder(t *testing.T, l *testenv.Slapd, cn, addr, home string, acl ...string) string {
	t.Helper()
	dn := "cn=" + cn + "," + l.BaseDN
	attrs := map[string][]string{"objectClass": {"univentionMailSharedFolder"}, "cn": {cn}}
	if addr != "" {
		attrs["mailPrimaryAddress"] = []string{addr}
	}
	if home != "" {
		attrs["univentionMailHomeServer"] = []string{home}
	}
	if len(acl) > 0 {
		attrs["univentionMailACL"] = acl
	}
	l.Add(t, dn, attrs)
	return dn
}

// canRead checks what user sees of folder's INBOX over IMAP: n messages,
// or with n < 0 that SELECT is refused.
func (e *env) canRead(t *testing.T, user, folder string, n int) {
	t.Helper()
	e.selects(t, user, "shared/"+folder+"/INBOX", n)
}

// A shared folder Dovecot does not know (a userdb without folders) is not
// taken for a change a newer one superseded, which would ack the event with
// nothing done: the handler returns a retryable error naming the address.
func TestFolderUnknownToDovecotIsRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: true, delete: false}, testenv.DovecotOptions{SharedFolders: true}, false)
	const uuid = "33333333-0000-0000-0000-000000000001"
	dn := "cn=ghost@example.org," + e.ldap.BaseDN // not in the directory Dovecot reads
	attrs := event.Attrs{event.AttrObjectClass: {"univentionMailSharedFolder"}, event.AttrCN: {"ghost@example.org"},
		event.AttrPrimaryAddress: {"ghost@example.org"}, event.AttrHomeServer: {host}, event.AttrACL: {"alice@example.org read"}}
	e.h.UseLatest(func(context.Context, string) (event.Entry, bool, error) {
		return event.Entry{UUID: uuid, DN: dn, Kind: event.KindFolder, Attrs: attrs}, true, nil
	})
	err := e.h.Handle(context.Background(), event.Event{Op: event.OpAdd, Kind: event.KindFolder, UUID: uuid, DN: dn, New: attrs})
	if err == nil || !fault.IsRetryable(err) || !strings.Contains(err.Error(), "ghost@example.org") {
		t.Errorf("a folder Dovecot does not know: %v, want a retryable error naming its address", err)
	}
}
