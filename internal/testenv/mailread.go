package testenv

import (
	"context"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// Subjects returns the subjects of the messages in user's INBOX, read over
// IMAP as the master user; none when the user has no mailbox yet.
func (d *Dovecot) Subjects(t testing.TB, user string) []string {
	t.Helper()
	return d.SubjectsIn(t, user, "INBOX")
}

// SubjectsIn returns the subjects of the messages in mailbox as user sees
// it (a public folder's "<name>@<domain>/INBOX", as its ACL allows); none
// when user cannot select it.
func (d *Dovecot) SubjectsIn(t testing.TB, user, mailbox string) []string {
	t.Helper()
	c, err := d.IMAPReader().DialMaster(context.Background(), user)
	if err != nil {
		return nil
	}
	defer func() { c.Logout().Wait(); c.Close() }()
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil || sel.NumMessages == 0 {
		return nil
	}
	var set imap.SeqSet
	set.AddRange(1, sel.NumMessages)
	msgs, err := c.Fetch(set, &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		t.Fatalf("IMAP fetch %s %s: %v", user, mailbox, err)
	}
	var out []string
	for _, m := range msgs {
		if m.Envelope != nil {
			out = append(out, m.Envelope.Subject)
		}
	}
	return out
}

// HasMessage reports whether user's INBOX holds a message with subject.
func (d *Dovecot) HasMessage(t testing.TB, user, subject string) bool {
	t.Helper()
	for _, s := range d.Subjects(t, user) {
		if s == subject {
			return true
		}
	}
	return false
}
