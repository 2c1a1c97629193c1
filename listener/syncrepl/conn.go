// Package syncrepl is the client side of one RFC 4533 content
// synchronisation search, on a connection package ldapconn opened (and
// upgraded with StartTLS and bound): the sync search's results are decoded
// as they stream in.
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
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"mailsync/ldapconn"
)

// Mode is the sync request mode.
type Mode int

const (
	ModeRefreshOnly       Mode = Mode(ldap.SyncRequestModeRefreshOnly)
	ModeRefreshAndPersist Mode = Mode(ldap.SyncRequestModeRefreshAndPersist)
)

// writeTimeout bounds sending the search; the search itself has no
// deadline (persist mode is idle for hours).
const writeTimeout = 30 * time.Second

// Conn is a connection to a directory server.
type Conn struct {
	nc     net.Conn
	r      *bufio.Reader
	nextID int64
	buf    []byte

	closeOnce sync.Once
	closeErr  error
}

// Dial opens a connection to t's directory: connected, upgraded with
// StartTLS and bound as t says (ldapconn.Open), ready for Search.
func Dial(ctx context.Context, t ldapconn.Target) (*Conn, error) {
	nc, _, err := ldapconn.Open(ctx, t)
	if err != nil {
		return nil, err
	}
	return NewConn(nc), nil
}

// NewConn speaks LDAP on nc, which has answered no request not yet read
// (ldapconn.Open).
func NewConn(nc net.Conn) *Conn {
	// Open used message ids 1 and 2 and read their answers: they are done
	// with, and ids may be used again (RFC 4511 §4.1.1.1).
	return &Conn{nc: nc, r: bufio.NewReaderSize(nc, 64<<10)}
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
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
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
