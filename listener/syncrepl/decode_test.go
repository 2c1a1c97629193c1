package syncrepl

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// entryMessage is a SearchResultEntry with a sync state control, encoded by
// go-asn1-ber (an encoder independent of the decoder under test).
func entryMessage(id int64, dn string, attrs map[string][]string, cookie string) []byte {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAPMessage")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "MessageID"))
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 4, nil, "SearchResultEntry")
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, "DN"))
	as := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "Attributes")
	for name, vals := range attrs {
		a := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "Attribute")
		a.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, name, "Type"))
		vs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSet, nil, "Values")
		for _, v := range vals {
			vs.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, v, "Value"))
		}
		a.AppendChild(vs)
		as.AppendChild(a)
	}
	op.AppendChild(as)
	p.AppendChild(op)
	state := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "syncStateValue")
	state.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, 2, "state"))
	state.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString,
		"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff", "entryUUID"))
	state.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, cookie, "cookie"))
	ctl := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "Control")
	ctl.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, oidSyncState, "type"))
	ctl.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, string(state.Bytes()), "value"))
	cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "Controls")
	cs.AppendChild(ctl)
	p.AppendChild(cs)
	return p.Bytes()
}

// decodeOne reads one message from b the way a Stream does.
func decodeOne(b []byte) (*Message, error) {
	c := &Conn{r: bufio.NewReader(bytes.NewReader(b))}
	s := &Stream{c: c, id: 7}
	return s.next()
}

func TestDecodeEntry(t *testing.T) {
	long := strings.Repeat("v", 300)
	msg := entryMessage(7, "uid=a,dc=x", map[string][]string{"mail": {"a@x", long}}, "rid=1,csn=2")
	m, err := decodeOne(msg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != KindEntry || m.DN != "uid=a,dc=x" || !m.HasState || m.State != StateModify ||
		m.UUID.String() != "00112233-4455-6677-8899-aabbccddeeff" || string(m.Cookie) != "rid=1,csn=2" {
		t.Fatalf("decoded %+v", m)
	}
	if len(m.Attributes) != 1 || m.Attributes[0].Name != "mail" || len(m.Attributes[0].Values) != 2 ||
		m.Attributes[0].Values[1] != long || m.Attr("MAIL") != "a@x" {
		t.Fatalf("attributes %+v", m.Attributes)
	}
	// Appending to one attribute's values must not overwrite another's.
	_ = append(m.Attributes[0].Values, "x")
}

// Every truncation and every single-byte corruption of a valid message is
// an error or a message, never a panic; truncations are always errors.
func TestDecodeBrokenInput(t *testing.T) {
	msg := entryMessage(7, "uid=a,dc=x", map[string][]string{"mail": {"a@x", "b@x"}, "cn": {"a"}}, "c")
	for i := 0; i < len(msg); i++ {
		if _, err := decodeOne(msg[:i]); err == nil {
			t.Fatalf("truncated to %d of %d bytes: no error", i, len(msg))
		}
		for _, x := range []byte{0x00, 0xff, 0x80, 0x84, 0x30, 0x01} {
			b := append([]byte{}, msg...)
			b[i] = x
			decodeOne(b)
		}
	}
	// A length over the limit is refused before anything is allocated.
	if _, err := decodeOne([]byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff}); !errors.Is(err, errMalformed) {
		t.Fatalf("huge length: %v", err)
	}
	if _, err := decodeOne([]byte{0x30, 0x80, 0x00, 0x00}); !errors.Is(err, errMalformed) {
		t.Fatalf("indefinite length: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(entryMessage(7, "uid=a,dc=x", map[string][]string{"mail": {"a@x"}}, "c"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x07})
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeOne(b)
	})
}
