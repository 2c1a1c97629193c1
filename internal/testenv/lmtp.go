package testenv

import (
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// Deliver delivers a small message to rcpt over LMTP, as Postfix would, and
// fails the test if Dovecot does not accept it.
func (d *Dovecot) Deliver(t testing.TB, rcpt, subject string) {
	t.Helper()
	if err := d.TryDeliver(rcpt, subject); err != nil {
		t.Fatalf("deliver to %s: %v\n%s", rcpt, err, d.logTail())
	}
}

// TryDeliver delivers like Deliver and returns Dovecot's refusal, e.g. a
// "550 5.1.1 ... User doesn't exist" for a user homed on another server.
func (d *Dovecot) TryDeliver(rcpt, subject string) error {
	conn, err := net.DialTimeout("tcp", d.LMTPAddr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := textproto.NewConn(conn)
	step := func(code int, format string, args ...any) error {
		if format != "" {
			if err := c.PrintfLine(format, args...); err != nil {
				return err
			}
		}
		_, _, err := c.ReadResponse(code)
		if err != nil && format != "" {
			return fmt.Errorf("%s: %w", strings.Fields(format)[0], err)
		}
		return err
	}
	if err := step(220, ""); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if err := step(250, "LHLO test.example.org"); err != nil {
		return err
	}
	if err := step(250, "MAIL FROM:<sender@example.org>"); err != nil {
		return err
	}
	if err := step(250, "RCPT TO:<%s>", rcpt); err != nil {
		return err
	}
	if err := step(354, "DATA"); err != nil {
		return err
	}
	w := c.DotWriter()
	fmt.Fprintf(w, "From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%d.%s@test.example.org>\r\n\r\nHello %s.\r\n",
		rcpt, subject, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), strings.ReplaceAll(rcpt, "@", "."), rcpt)
	if err := w.Close(); err != nil {
		return err
	}
	// LMTP answers DATA once per accepted recipient.
	if _, _, err := c.ReadResponse(250); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	_ = c.PrintfLine("QUIT")
	return nil
}
