package testenv

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/dovecotadm"
)

func TestDovecot(t *testing.T) {
	t.Parallel()
	ldap := StartSlapd(t)
	ldap.AddUser(t, "alice", "Alice@Example.org", nil)
	ldap.AddUser(t, "bob", "bob@example.org", map[string][]string{"univentionMailHomeServer": {"other.example.org"}})
	ldap.AddUser(t, "carol", "carol@example.org", map[string][]string{"univentionMailHomeServer": {"mail.example.org"}})

	start := time.Now()
	d := StartDovecot(t, ldap, DovecotOptions{})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("dovecot took %s to start, want < 2s", took)
	}

	d.Deliver(t, "alice@example.org", "one")
	d.Deliver(t, "carol@example.org", "two")
	if err := d.TryDeliver("bob@example.org", "elsewhere"); err == nil {
		t.Errorf("delivery to a user homed on another server succeeded")
	}

	got := d.MailboxSummary(t, "alice@example.org")
	if got["INBOX"].Messages != 1 {
		t.Errorf("alice's folders = %+v, want 1 message in INBOX", got)
	}
	// UCS layout: <spool>/<domain>/<localpart>/Maildir, lowercased, owned by the mail user.
	if st, err := os.Stat(d.Home("alice@example.org") + "/Maildir/new"); err != nil || int(st.Sys().(*syscall.Stat_t).Uid) != d.UID {
		t.Errorf("alice's maildir: %v, want it at the UCS path owned by uid %d", err, d.UID)
	}

	for _, tc := range []struct {
		login, pass string
		ok          bool
	}{
		{"alice@example.org", "secret", true},
		{"ALICE@example.org", "secret", true},
		{"alice", "secret", true}, // by uid
		{"alice@example.org", "wrong", false},
		{"alice@other.example", "secret", false},
		{"bob@example.org", "secret", false}, // homed on another server
		{"carol@example.org", "secret", true},
	} {
		err := d.Login(tc.login, tc.pass)
		if tc.ok && err != nil {
			t.Errorf("login %s: %v", tc.login, err)
		}
		if !tc.ok && !errors.Is(err, dovecotadm.ErrLoginFailed) {
			t.Errorf("login %s: %v, want ErrLoginFailed", tc.login, err)
		}
	}

	d.Stop(t)
	if err := d.Login("alice@example.org", "secret"); err == nil || errors.Is(err, dovecotadm.ErrLoginFailed) {
		t.Errorf("login while stopped: %v, want a connection error", err)
	}
	start = time.Now()
	d.Start(t)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("dovecot took %s to restart, want < 2s", took)
	}
	if got := d.MailboxSummary(t, "carol@example.org"); got["INBOX"].Messages != 1 {
		t.Errorf("carol's folders after restart = %+v, want 1 message in INBOX", got)
	}
}

func TestDovecotSeparateIndex(t *testing.T) {
	t.Parallel()
	ldap := StartSlapd(t)
	ldap.AddUser(t, "dave", "dave@example.org", nil)
	d := StartDovecot(t, ldap, DovecotOptions{SeparateIndex: true, FQDN: "imap2.example.org"})
	d.Deliver(t, "dave@example.org", "indexed")
	if got := d.MailboxSummary(t, "dave@example.org"); got["INBOX"].Messages != 1 {
		t.Errorf("dave's folders = %+v", got)
	}
	if _, err := os.Stat(d.IndexRoot + "/example.org/dave"); err != nil {
		t.Errorf("index not under IndexRoot: %v", err)
	}
}

// Shared folders as UCS serves them (reference §2): mail for a folder's
// address is delivered over LMTP into its private mailbox; a user the
// folder's ACL grants read can SELECT shared/<address>/INBOX and read it,
// one without cannot; a folder homed on another host gets no mail here.
func TestDovecotSharedFolder(t *testing.T) {
	t.Parallel()
	ldap := StartSlapd(t)
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	ldap.AddUser(t, "bob", "bob@example.org", nil)
	folder := func(cn, mail, home string) {
		ldap.Add(t, "cn="+cn+","+ldap.BaseDN, map[string][]string{"objectClass": {"univentionMailSharedFolder"},
			"cn": {cn + "@example.org"}, "mailPrimaryAddress": {mail}, "univentionMailHomeServer": {home}})
	}
	folder("team", "team@example.org", "mail.example.org")
	folder("far", "far@example.org", "other.example.org")
	d := StartDovecot(t, ldap, DovecotOptions{SharedFolders: true})

	d.Deliver(t, "team@example.org", "for the team")
	if err := d.TryDeliver("far@example.org", "elsewhere"); err == nil {
		t.Errorf("delivery to a folder homed on another host succeeded")
	}
	if m, _ := filepath.Glob(filepath.Join(d.Home("team@example.org"), "Maildir", "new", "*")); len(m) != 1 {
		t.Errorf("team's maildir holds %d new messages, want 1", len(m))
	}
	if err := d.Login("team@example.org", "secret"); !errors.Is(err, dovecotadm.ErrLoginFailed) {
		t.Errorf("login as the folder: %v, want refused (a folder has no passdb entry)", err)
	}

	adm, err := dovecotadm.New(d.DoveadmURL, d.APIKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := adm.SetACL(ctx, "team@example.org", "INBOX", "user=alice@example.org", []string{"lookup", "read", "write-seen"}); err != nil {
		t.Fatal(err)
	}
	acl, err := adm.ACL(ctx, "team@example.org", "INBOX")
	if err != nil || strings.Join(acl["user=alice@example.org"], " ") != "lookup read write-seen" {
		t.Errorf("acl = %v, %v", acl, err)
	}
	imap := d.IMAPReader()
	for _, tc := range []struct {
		user string
		ok   bool
	}{{"alice@example.org", true}, {"bob@example.org", false}} {
		c, err := imap.Dial(ctx, tc.user, "secret")
		if err != nil {
			t.Fatal(err)
		}
		data, err := c.Select("shared/team@example.org/INBOX", nil).Wait()
		if tc.ok && (err != nil || data.NumMessages != 1) {
			t.Errorf("%s: SELECT the shared folder: %v, %+v; want its 1 message", tc.user, err, data)
		}
		if !tc.ok && err == nil {
			t.Errorf("%s: SELECT the shared folder without a right succeeded", tc.user)
		}
		c.Close()
	}
	// Removing the entry takes the right away.
	if err := adm.SetACL(ctx, "team@example.org", "INBOX", "user=alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	c, err := imap.Dial(ctx, "alice@example.org", "secret")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Select("shared/team@example.org/INBOX", nil).Wait(); err == nil {
		t.Errorf("alice: SELECT after the ACL entry was removed succeeded")
	}
}
