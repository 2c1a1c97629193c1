// Package syncrepl is the client side of one RFC 4533 content
// synchronisation search: connect, StartTLS, simple bind, then a sync
// search whose results are decoded as they stream in.
//
// It exists for speed. The listener reads every entry of the directory
// through this search on each full refresh, and go-ldap decodes each
// message into a generic tree of BER packets, allocating per element: that
// alone took 2–3× as long as ldapsearch reading the same entries. Here a
// message is read whole into a reused buffer and walked by offsets; its
// strings share one allocation. Everything else the daemon says to a
// directory goes through go-ldap, which also encodes the requests sent here
// (filter, sync request control) and supplies the error type, so
// ldap.IsErrorWithCode works on errors from both.
//
// A Conn carries one search at a time and is not safe for concurrent use,
// except Close, which may be called at any time to end a blocked read.
package syncrepl

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// Mode is the sync request mode.
type Mode int

const (
	ModeRefreshOnly       Mode = Mode(ldap.SyncRequestModeRefreshOnly)
	ModeRefreshAndPersist Mode = Mode(ldap.SyncRequestModeRefreshAndPersist)
)

// dialTimeout bounds connecting and each request before the search; the
// search itself has no deadline (persist mode is idle for hours).
const dialTimeout = 30 * time.Second

// Conn is a connection to a directory server.
type Conn struct {
	nc     net.Conn
	r      *bufio.Reader
	isTLS  bool
	host   string
	nextID int64
	buf    []byte

	closeOnce sync.Once
	closeErr  error
}

// Dial connects to an ldap://, ldaps:// or ldapi:// URL. tlsCfg is used for
// ldaps (nil: system roots, the URL's host name).
func Dial(ctx context.Context, rawURL string, tlsCfg *tls.Config) (*Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse directory URL %q: %w", rawURL, err)
	}
	d := net.Dialer{Timeout: dialTimeout}
	var nc net.Conn
	host := u.Hostname()
	switch u.Scheme {
	case "ldap", "ldaps":
		port := u.Port()
		if port == "" {
			port = "389"
			if u.Scheme == "ldaps" {
				port = "636"
			}
		}
		nc, err = d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
		if err == nil && u.Scheme == "ldaps" {
			tc := tlsConfig(tlsCfg, host)
			tconn := tls.Client(nc, tc)
			if err = tconn.HandshakeContext(ctx); err != nil {
				nc.Close()
			} else {
				nc = tconn
			}
		}
	case "ldapi":
		path, perr := url.PathUnescape(u.Host)
		if perr != nil || path == "" {
			path = "/var/run/slapd/ldapi"
		}
		nc, err = d.DialContext(ctx, "unix", path)
	default:
		return nil, fmt.Errorf("directory URL %q: unknown scheme %q", rawURL, u.Scheme)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", rawURL, err)
	}
	return &Conn{nc: nc, r: bufio.NewReaderSize(nc, 64<<10), isTLS: u.Scheme == "ldaps", host: host}, nil
}

func tlsConfig(cfg *tls.Config, host string) *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg != nil {
		tc = cfg.Clone()
	}
	if tc.ServerName == "" {
		tc.ServerName = host
	}
	return tc
}

// Close ends the connection, telling the server first when it can.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		c.write(ber.Encode(ber.ClassApplication, ber.TypePrimitive, 2, nil, "Unbind Request"))
		c.closeErr = c.nc.Close()
	})
	return c.closeErr
}

// StartTLS upgrades the connection (RFC 4511 §4.14).
func (c *Conn) StartTLS(ctx context.Context, cfg *tls.Config) error {
	if c.isTLS {
		return errors.New("starttls: connection is already TLS")
	}
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationExtendedRequest, nil, "Extended Request")
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, "1.3.6.1.4.1.1466.20037", "StartTLS"))
	if err := c.request(ctx, op, tagExtendedResponse); err != nil {
		return fmt.Errorf("starttls: %w", err)
	}
	tconn := tls.Client(c.nc, tlsConfig(cfg, c.host))
	if err := tconn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("starttls handshake: %w", err)
	}
	c.nc, c.isTLS = tconn, true
	c.r.Reset(tconn)
	return nil
}

// Bind is a simple bind (RFC 4511 §4.2).
func (c *Conn) Bind(ctx context.Context, dn, password string) error {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationBindRequest, nil, "Bind Request")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 3, "Version"))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, "User Name"))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, password, "Password"))
	if err := c.request(ctx, op, tagBindResponse); err != nil {
		return fmt.Errorf("bind as %s: %w", dn, err)
	}
	return nil
}

// request sends op and reads its response, which must have tag want.
func (c *Conn) request(ctx context.Context, op *ber.Packet, want byte) error {
	deadline := time.Now().Add(dialTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.nc.SetDeadline(deadline)
	defer c.nc.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	id, err := c.send(op, nil)
	if err != nil {
		return err
	}
	for {
		mid, tag, body, _, err := c.read()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if mid != id {
			if mid == 0 {
				return unsolicited(tag, body)
			}
			continue // a late answer to something abandoned
		}
		if tag != want {
			return fmt.Errorf("%w: response tag 0x%02x, want 0x%02x", errMalformed, tag, want)
		}
		return result(body)
	}
}

// send writes an LDAPMessage with op and controls and returns its id.
func (c *Conn) send(op *ber.Packet, controls []*ber.Packet) (int64, error) {
	c.nextID++
	id := c.nextID
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAP Request")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "MessageID"))
	p.AppendChild(op)
	if len(controls) > 0 {
		cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "Controls")
		for _, ctl := range controls {
			cs.AppendChild(ctl)
		}
		p.AppendChild(cs)
	}
	return id, c.write(p)
}

func (c *Conn) write(p *ber.Packet) error {
	if _, err := c.nc.Write(p.Bytes()); err != nil {
		return fmt.Errorf("send to directory: %w", err)
	}
	return nil
}

// read reads one message: its id, the protocolOp's tag and contents, and the
// contents of its controls (nil when none). The slices are valid until the
// next read.
func (c *Conn) read() (id int64, tag byte, op, ctrls []byte, err error) {
	var msg []byte
	msg, c.buf, err = readMessage(c.r, c.buf)
	if err != nil {
		return 0, 0, nil, nil, err
	}
	mc := cursor{b: msg}
	idEl := mc.expect(tagInteger, "messageID")
	opEl := mc.next()
	if ctl, ok := mc.optional(tagControls); ok {
		ctrls = ctl.body
	}
	if mc.err != nil {
		return 0, 0, nil, nil, mc.err
	}
	if id, err = integer(idEl.body); err != nil {
		return 0, 0, nil, nil, err
	}
	return id, opEl.tag, opEl.body, ctrls, nil
}

// unsolicited is the error for an unsolicited notification (message id 0),
// which is the server saying it is about to drop the connection.
func unsolicited(tag byte, op []byte) error {
	err := errors.New("notice of disconnection")
	if tag == tagExtendedResponse {
		if rerr := result(op); rerr != nil {
			err = rerr
		}
	}
	return fmt.Errorf("directory sent an unsolicited notification: %w", err)
}

// Request is a sync search.
type Request struct {
	BaseDN     string
	Filter     string
	Attributes []string
	Mode       Mode
	Cookie     []byte
	ReloadHint bool
}

// Stream is a running sync search.
type Stream struct {
	c    *Conn
	id   int64
	stop func() bool
	ctx  context.Context
	err  error
	// ended: the KindDone message was returned
	ended bool
}

// Search starts a sync search over the whole subtree of req.BaseDN. While
// it runs, ending ctx closes the connection.
func (c *Conn) Search(ctx context.Context, req Request) (*Stream, error) {
	filter, err := ldap.CompileFilter(req.Filter)
	if err != nil {
		return nil, fmt.Errorf("sync search filter %q: %w", req.Filter, err)
	}
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationSearchRequest, nil, "Search Request")
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, req.BaseDN, "Base DN"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, uint64(ldap.ScopeWholeSubtree), "Scope"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, uint64(ldap.NeverDerefAliases), "Deref Aliases"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 0, "Size Limit"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 0, "Time Limit"))
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, "Types Only"))
	op.AppendChild(filter)
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "Attributes")
	for _, a := range req.Attributes {
		attrs.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, a, "Attribute"))
	}
	op.AppendChild(attrs)
	ctl := ldap.NewControlSyncRequest(ldap.ControlSyncRequestMode(req.Mode), req.Cookie, req.ReloadHint)
	c.nc.SetWriteDeadline(time.Now().Add(dialTimeout))
	id, err := c.send(op, []*ber.Packet{ctl.Encode()})
	c.nc.SetWriteDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("start sync search: %w", err)
	}
	s := &Stream{c: c, id: id, ctx: ctx}
	s.stop = context.AfterFunc(ctx, func() { c.nc.Close() })
	return s, nil
}

// Next returns the next entry, sync info message, reference, or the
// KindDone message that ends a successful search, after which it returns
// ErrEnded. A search that fails ends with an *ldap.Error for its result
// code (such as e-syncRefreshRequired) or the read error. After an error the stream is
// done and returns the same error again.
func (s *Stream) Next() (*Message, error) {
	if s.err != nil {
		return nil, s.err
	}
	if s.ended {
		s.err = ErrEnded
		s.stop()
		return nil, s.err
	}
	m, err := s.next()
	if err != nil {
		if s.ctx.Err() != nil {
			err = s.ctx.Err()
		}
		s.err = err
		s.stop()
	}
	return m, err
}

func (s *Stream) next() (*Message, error) {
	for {
		id, tag, op, ctrls, err := s.c.read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("directory closed the connection: %w", err)
			}
			return nil, err
		}
		if id != s.id {
			if id == 0 {
				return nil, unsolicited(tag, op)
			}
			continue
		}
		switch tag {
		case tagSearchEntry:
			return decodeEntry(s.c.buf, op, ctrls)
		case tagIntermediate:
			m, err := decodeIntermediate(op)
			if m == nil && err == nil {
				continue // an intermediate response of another kind
			}
			return m, err
		case tagSearchReference:
			return decodeReference(op)
		case tagSearchDone:
			if err := result(op); err != nil {
				return nil, err
			}
			s.ended = true
			return decodeDone(ctrls)
		default:
			return nil, fmt.Errorf("%w: sync search response with tag 0x%02x", errMalformed, tag)
		}
	}
}
