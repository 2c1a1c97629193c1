package testenv

import (
	"errors"
	"os"
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
