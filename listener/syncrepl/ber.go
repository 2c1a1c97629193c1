package syncrepl

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// BER as LDAP uses it (RFC 4511 §5.1): definite lengths only, tags below
// 31. The reader walks a message already in memory by offsets; nothing is
// allocated until a value is taken.

// Tags of the elements the client reads.
const (
	tagBoolean     = 0x01
	tagInteger     = 0x02
	tagOctetString = 0x04
	tagEnumerated  = 0x0a
	tagSequence    = 0x30
	tagSet         = 0x31

	tagBindResponse     = 0x61 // [APPLICATION 1] constructed
	tagSearchEntry      = 0x64 // [APPLICATION 4]
	tagSearchDone       = 0x65 // [APPLICATION 5]
	tagSearchReference  = 0x73 // [APPLICATION 19]
	tagExtendedResponse = 0x78 // [APPLICATION 24]
	tagIntermediate     = 0x79 // [APPLICATION 25]
	tagControls         = 0xa0 // [0] constructed
)

// maxMessage bounds one LDAP message; a larger length is a broken or hostile
// stream, not an entry.
const maxMessage = 64 << 20

var errMalformed = errors.New("malformed BER")

// elem is one decoded TLV: its tag and the bytes of its contents.
type elem struct {
	tag  byte
	body []byte
}

// cursor reads consecutive elements from b.
type cursor struct {
	b   []byte
	err error
}

func (c *cursor) more() bool { return c.err == nil && len(c.b) > 0 }

// next returns the next element; on malformed input it records the error
// and returns an element with tag 0.
func (c *cursor) next() elem {
	if c.err != nil {
		return elem{}
	}
	if len(c.b) < 2 {
		c.err = fmt.Errorf("%w: truncated element", errMalformed)
		return elem{}
	}
	tag := c.b[0]
	if tag&0x1f == 0x1f {
		c.err = fmt.Errorf("%w: multi-byte tag", errMalformed)
		return elem{}
	}
	n, hdr, err := parseLength(c.b[1:])
	if err != nil {
		c.err = err
		return elem{}
	}
	start := 1 + hdr
	if n > len(c.b)-start {
		c.err = fmt.Errorf("%w: element of %d bytes overruns its parent", errMalformed, n)
		return elem{}
	}
	e := elem{tag: tag, body: c.b[start : start+n]}
	c.b = c.b[start+n:]
	return e
}

// expect returns the next element if it has tag t.
func (c *cursor) expect(t byte, what string) elem {
	e := c.next()
	if c.err == nil && e.tag != t {
		c.err = fmt.Errorf("%w: %s: tag 0x%02x, want 0x%02x", errMalformed, what, e.tag, t)
	}
	return e
}

// optional returns the next element if it has tag t, leaving the cursor
// where it was otherwise.
func (c *cursor) optional(t byte) (elem, bool) {
	if !c.more() || c.b[0] != t {
		return elem{}, false
	}
	e := c.next()
	return e, c.err == nil
}

// parseLength decodes a definite length; hdr is the number of bytes it took.
func parseLength(b []byte) (n, hdr int, err error) {
	if len(b) == 0 {
		return 0, 0, fmt.Errorf("%w: missing length", errMalformed)
	}
	if b[0] < 0x80 {
		return int(b[0]), 1, nil
	}
	k := int(b[0] & 0x7f)
	if k == 0 {
		return 0, 0, fmt.Errorf("%w: indefinite length", errMalformed)
	}
	if k > 4 || len(b) < 1+k {
		return 0, 0, fmt.Errorf("%w: length of %d bytes", errMalformed, k)
	}
	for _, x := range b[1 : 1+k] {
		n = n<<8 | int(x)
	}
	if n > maxMessage {
		return 0, 0, fmt.Errorf("%w: length %d over the limit of %d", errMalformed, n, maxMessage)
	}
	return n, 1 + k, nil
}

// integer decodes a two's complement INTEGER or ENUMERATED of up to 8 bytes.
func integer(b []byte) (int64, error) {
	if len(b) == 0 || len(b) > 8 {
		return 0, fmt.Errorf("%w: integer of %d bytes", errMalformed, len(b))
	}
	v := int64(int8(b[0]))
	for _, x := range b[1:] {
		v = v<<8 | int64(x)
	}
	return v, nil
}

func boolean(b []byte) (bool, error) {
	if len(b) != 1 {
		return false, fmt.Errorf("%w: boolean of %d bytes", errMalformed, len(b))
	}
	return b[0] != 0, nil
}

// readMessage reads one whole LDAPMessage from r into buf (grown as needed)
// and returns the bytes of its SEQUENCE contents.
func readMessage(r *bufio.Reader, buf []byte) ([]byte, []byte, error) {
	tag, err := r.ReadByte()
	if err != nil {
		return nil, buf, err
	}
	if tag != tagSequence {
		return nil, buf, fmt.Errorf("%w: message starts with tag 0x%02x", errMalformed, tag)
	}
	var hdr [5]byte
	hdr[0], err = r.ReadByte()
	if err != nil {
		return nil, buf, noEOF(err)
	}
	k := 0
	if hdr[0] >= 0x80 {
		k = int(hdr[0] & 0x7f)
		if k == 0 || k > 4 {
			return nil, buf, fmt.Errorf("%w: message length of %d bytes", errMalformed, k)
		}
		if _, err := io.ReadFull(r, hdr[1:1+k]); err != nil {
			return nil, buf, noEOF(err)
		}
	}
	n, _, err := parseLength(hdr[:1+k])
	if err != nil {
		return nil, buf, err
	}
	if cap(buf) < n {
		buf = make([]byte, n, n+n/4)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, buf, noEOF(err)
	}
	return buf, buf, nil
}

// noEOF turns an end of stream inside a message into an unexpected one.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
