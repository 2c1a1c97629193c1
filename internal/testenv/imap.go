package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailsync/dovecotadm"
)

// FolderSummary is what a user sees in one IMAP folder.
type FolderSummary = dovecotadm.FolderStatus

// IMAPReader returns mailsync's own IMAP reader, configured for the master
// user: the same code production uses to verify a move.
func (d *Dovecot) IMAPReader() *dovecotadm.IMAP {
	return &dovecotadm.IMAP{Addr: d.IMAPAddr, MasterUser: d.MasterUser, MasterPass: d.MasterPass, Timeout: 10 * time.Second}
}

// IMAP logs in as user through the master user and returns the client,
// logged out and closed in t.Cleanup.
func (d *Dovecot) IMAP(t testing.TB, user string) *imapclient.Client {
	t.Helper()
	c, err := d.IMAPReader().DialMaster(context.Background(), user)
	if err != nil {
		t.Fatalf("IMAP master login as %s: %v\n%s", user, err, d.logTail())
	}
	t.Cleanup(func() { c.Logout().Wait(); c.Close() })
	return c
}

// Login logs in as user with its own password and logs out; the error is
// the refusal (errors.Is(err, dovecotadm.ErrLoginFailed)) when the user
// cannot log in, e.g. by an address it no longer has.
func (d *Dovecot) Login(user, password string) error {
	c, err := d.IMAPReader().Dial(context.Background(), user, password)
	if err != nil {
		return err
	}
	c.Logout().Wait()
	return c.Close()
}

// MailboxSummary lists user's folders with message and flagged counts, as
// the user would see them over IMAP.
func (d *Dovecot) MailboxSummary(t testing.TB, user string) map[string]FolderSummary {
	t.Helper()
	m, err := d.IMAPReader().Folders(context.Background(), user)
	if err != nil {
		t.Fatalf("%v\n%s", err, d.logTail())
	}
	return m
}
