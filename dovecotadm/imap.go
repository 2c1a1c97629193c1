package dovecotadm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailsync/fault"
)

// ErrLoginFailed: the IMAP server refused the credentials, or (with a master
// login) does not know the user.
var ErrLoginFailed = errors.New("IMAP login failed")

// IMAP reads a user's mailboxes over IMAP, logging in as a Dovecot master
// user ("user*master"), the way an operator checks a mailbox after a move:
// what the user would see, not what is on disk.
type IMAP struct {
	Addr       string        // host:port of the IMAP listener (plain text, or STARTTLS-less loopback)
	MasterUser string        // a passdb entry with master=yes
	MasterPass string        //
	Separator  string        // auth_master_user_separator; default "*"
	Timeout    time.Duration // bounds a whole session; default DefaultTimeout
}

// FolderStatus is what a user sees in one folder.
type FolderStatus struct {
	Messages int
	Flagged  int
}

// Folders returns every selectable folder of user with its message and
// flagged counts.
func (m *IMAP) Folders(ctx context.Context, user string) (map[string]FolderStatus, error) {
	out := map[string]FolderStatus{}
	err := m.session(ctx, user, func(c *imapclient.Client) error {
		list, err := c.List("", "*", nil).Collect()
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].Mailbox < list[j].Mailbox })
		for _, mb := range list {
			if hasAttr(mb.Attrs, imap.MailboxAttrNoSelect) || hasAttr(mb.Attrs, imap.MailboxAttrNonExistent) {
				continue
			}
			sel, err := c.Select(mb.Mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
			if err != nil {
				return fmt.Errorf("examine %s: %w", mb.Mailbox, err)
			}
			fs := FolderStatus{Messages: int(sel.NumMessages)}
			if sel.NumMessages > 0 {
				res, err := c.Search(&imap.SearchCriteria{Flag: []imap.Flag{imap.FlagFlagged}}, nil).Wait()
				if err != nil {
					return fmt.Errorf("search %s: %w", mb.Mailbox, err)
				}
				fs.Flagged = len(res.AllSeqNums())
			}
			out[mb.Mailbox] = fs
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read folders of %s over IMAP: %w", user, err)
	}
	return out, nil
}

// Dial connects and logs in as username with password, bounded by ctx and
// Timeout while it does. The returned client is the caller's to Logout and
// Close; it outlives ctx.
func (m *IMAP) Dial(ctx context.Context, username, password string) (*imapclient.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout())
	defer cancel()
	c, err := m.dial(ctx, username, password)
	if err != nil {
		return nil, fmt.Errorf("IMAP login as %s: %w", username, err)
	}
	return c, nil
}

// DialMaster is Dial as user through the master login.
func (m *IMAP) DialMaster(ctx context.Context, user string) (*imapclient.Client, error) {
	return m.Dial(ctx, m.masterLogin(user), m.MasterPass)
}

func (m *IMAP) masterLogin(user string) string {
	sep := m.Separator
	if sep == "" {
		sep = "*"
	}
	return user + sep + m.MasterUser
}

func (m *IMAP) timeout() time.Duration {
	if m.Timeout > 0 {
		return m.Timeout
	}
	return DefaultTimeout
}

// dial connects and logs in; the connection is closed if ctx ends before
// the login finished (go-imap takes no context, so closing is how to cancel).
func (m *IMAP) dial(ctx context.Context, username, password string) (*imapclient.Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", m.Addr)
	if err != nil {
		return nil, fault.Retryable(err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	c := imapclient.New(conn, nil)
	if err := c.WaitGreeting(); err != nil {
		stop()
		c.Close()
		return nil, fault.Retryable(ctxErr(ctx, err))
	}
	if err := c.Login(username, password).Wait(); err != nil {
		stop()
		c.Close()
		return nil, classifyIMAP(ctxErr(ctx, err))
	}
	if !stop() {
		c.Close()
		return nil, fault.Retryable(ctx.Err())
	}
	return c, nil
}

// session runs fn on a master-user session bounded by ctx and Timeout.
func (m *IMAP) session(ctx context.Context, user string, fn func(*imapclient.Client) error) error {
	ctx, cancel := context.WithTimeout(ctx, m.timeout())
	defer cancel()
	c, err := m.dial(ctx, m.masterLogin(user), m.MasterPass)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := fn(c); err != nil {
		return classifyIMAP(ctxErr(ctx, err))
	}
	_ = c.Logout().Wait()
	return nil
}

// ctxErr prefers the context's reason over the "use of closed connection"
// that closing the connection produced.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// classifyIMAP: a refused login or a NO is the server's answer (permanent,
// unless it says UNAVAILABLE); a BAD, a dropped connection or a timeout may
// go away (retryable).
func classifyIMAP(err error) error {
	var ie *imap.Error
	if !errors.As(err, &ie) {
		return fault.Retryable(err)
	}
	switch {
	case ie.Code == imap.ResponseCodeUnavailable, ie.Type == imap.StatusResponseTypeBye:
		return fault.Retryable(err)
	case ie.Code == imap.ResponseCodeAuthenticationFailed, ie.Code == imap.ResponseCodeAuthorizationFailed:
		return fault.Permanent(fmt.Errorf("%w: %w", ErrLoginFailed, err))
	case ie.Type == imap.StatusResponseTypeNo:
		return fault.Permanent(err)
	}
	return fault.Retryable(err)
}

func hasAttr(attrs []imap.MailboxAttr, a imap.MailboxAttr) bool {
	for _, x := range attrs {
		if x == a {
			return true
		}
	}
	return false
}
