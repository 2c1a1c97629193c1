package syncrepl

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// OIDs of RFC 4533.
const (
	oidSyncState = "1.3.6.1.4.1.4203.1.9.1.2"
	oidSyncDone  = "1.3.6.1.4.1.4203.1.9.1.3"
	oidSyncInfo  = "1.3.6.1.4.1.4203.1.9.1.4"
)

// Kind is what a Message carries.
type Kind int

const (
	// KindEntry is a SearchResultEntry: an entry with its sync state.
	KindEntry Kind = iota + 1
	// KindInfo is a Sync Info Message (an intermediate response).
	KindInfo
	// KindReference is a SearchResultReference.
	KindReference
	// KindDone is the successful end of a search, with the sync done
	// control's cookie and refreshDeletes (refreshOnly mode ends so).
	KindDone
)

// State is the sync state of an entry (RFC 4533 §2.2).
type State int

const (
	StatePresent State = 0
	StateAdd     State = 1
	StateModify  State = 2
	StateDelete  State = 3
)

// InfoKind says which Sync Info Message a KindInfo message is (RFC 4533 §2.5).
type InfoKind int

const (
	InfoNewCookie InfoKind = iota + 1
	InfoRefreshDelete
	InfoRefreshPresent
	InfoSyncIDSet
)

// UUID is an entry's syncUUID as sent.
type UUID [16]byte

// String is the RFC 4122 form, lowercase, as go-ldap and the directory
// write it.
func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// Attribute is an attribute of an entry with the values sent.
type Attribute struct {
	Name   string
	Values []string
}

// Message is one message of the sync search. Its strings share one
// allocation per message; keep a copy of any that outlives the others long.
type Message struct {
	Kind Kind

	// KindEntry
	DN         string
	Attributes []Attribute
	// HasState is false for an entry sent without a sync state control
	// (the server does not speak RFC 4533 for it).
	HasState bool
	State    State
	UUID     UUID

	// Cookie is the entry's or the info message's cookie; nil when none
	// was sent.
	Cookie []byte

	// KindInfo
	Info InfoKind
	// RefreshDone: the refresh stage ended (refreshDelete, refreshPresent).
	RefreshDone bool
	// RefreshDeletes: the UUIDs of a syncIdSet are deleted entries rather
	// than present ones; for KindDone, entries not sent were deleted.
	RefreshDeletes bool
	UUIDs          []UUID

	// KindReference
	Referral []string
}

// Attr returns the first value of the named attribute or "".
func (m *Message) Attr(name string) string {
	for _, a := range m.Attributes {
		if len(a.Values) > 0 && strings.EqualFold(a.Name, name) {
			return a.Values[0]
		}
	}
	return ""
}

// ErrEnded is returned by Stream.Next after the KindDone message.
var ErrEnded = errors.New("sync search ended by the server")

// substr returns the part of s that sub is of msg: sub must be a slice of
// msg, and s a copy of msg.
func substr(s string, msg, sub []byte) string {
	if len(sub) == 0 {
		return ""
	}
	off := cap(msg) - cap(sub)
	return s[off : off+len(sub)]
}

// decodeEntry decodes a SearchResultEntry whose protocolOp contents are op
// and whose controls (possibly empty) are ctrls, both slices of msg.
func decodeEntry(msg, op, ctrls []byte) (*Message, error) {
	s := string(msg)
	m := &Message{Kind: KindEntry}
	c := cursor{b: op}
	dn := c.expect(tagOctetString, "objectName")
	attrs := c.expect(tagSequence, "attributes")
	if c.err != nil {
		return nil, c.err
	}
	m.DN = substr(s, msg, dn.body)
	// Count first so that the attributes and all their values take one
	// allocation each.
	na, nv := 0, 0
	ac := cursor{b: attrs.body}
	for ac.more() {
		pa := ac.expect(tagSequence, "PartialAttribute")
		pc := cursor{b: pa.body}
		pc.expect(tagOctetString, "attribute type")
		vals := pc.expect(tagSet, "attribute values")
		vc := cursor{b: vals.body}
		for vc.more() {
			vc.expect(tagOctetString, "attribute value")
			nv++
		}
		if pc.err != nil || vc.err != nil {
			return nil, errors.Join(pc.err, vc.err)
		}
		na++
	}
	if ac.err != nil {
		return nil, ac.err
	}
	m.Attributes = make([]Attribute, 0, na)
	values := make([]string, nv)
	ac = cursor{b: attrs.body}
	for ac.more() {
		pc := cursor{b: ac.next().body}
		name := substr(s, msg, pc.next().body)
		vc := cursor{b: pc.next().body}
		start := len(values) - nv
		for vc.more() {
			values[len(values)-nv] = substr(s, msg, vc.next().body)
			nv--
		}
		end := len(values) - nv
		m.Attributes = append(m.Attributes, Attribute{Name: name, Values: values[start:end:end]})
	}
	if err := decodeControls(m, ctrls); err != nil {
		return nil, err
	}
	return m, nil
}

// control returns the value of the control with the given OID among
// ctrls, the contents of a message's controls.
func control(ctrls []byte, oid string) (val []byte, found bool, err error) {
	cc := cursor{b: ctrls}
	for cc.more() {
		ctl := cursor{b: cc.expect(tagSequence, "control").body}
		typ := ctl.expect(tagOctetString, "controlType")
		ctl.optional(tagBoolean)
		v, hasVal := ctl.optional(tagOctetString)
		if ctl.err != nil {
			return nil, false, ctl.err
		}
		if string(typ.body) == oid {
			if !hasVal {
				return nil, false, fmt.Errorf("%w: control %s without a value", errMalformed, oid)
			}
			return v.body, true, nil
		}
	}
	return nil, false, cc.err
}

// decodeControls reads the sync state control of an entry; other response
// controls are skipped.
func decodeControls(m *Message, ctrls []byte) error {
	val, found, err := control(ctrls, oidSyncState)
	if !found || err != nil {
		return err
	}
	outer := cursor{b: val}
	seq := outer.expect(tagSequence, "syncStateValue")
	if outer.err != nil {
		return fmt.Errorf("sync state control: %w", outer.err)
	}
	vc := cursor{b: seq.body}
	st := vc.expect(tagEnumerated, "state")
	id := vc.expect(tagOctetString, "entryUUID")
	cookie, hasCookie := vc.optional(tagOctetString)
	if vc.err != nil {
		return fmt.Errorf("sync state control: %w", vc.err)
	}
	n, err := integer(st.body)
	if err != nil {
		return fmt.Errorf("sync state control: %w", err)
	}
	if n < int64(StatePresent) || n > int64(StateDelete) {
		return fmt.Errorf("%w: sync state %d", errMalformed, n)
	}
	if len(id.body) != len(m.UUID) {
		return fmt.Errorf("%w: entryUUID of %d bytes", errMalformed, len(id.body))
	}
	m.HasState, m.State = true, State(n)
	copy(m.UUID[:], id.body)
	if hasCookie {
		m.Cookie = append([]byte{}, cookie.body...)
	}
	return nil
}

// decodeIntermediate decodes an IntermediateResponse; it returns nil for
// one that is not a Sync Info Message.
func decodeIntermediate(op []byte) (*Message, error) {
	c := cursor{b: op}
	name, _ := c.optional(0x80)
	value, hasValue := c.optional(0x81)
	if c.err != nil {
		return nil, c.err
	}
	if string(name.body) != oidSyncInfo {
		return nil, nil
	}
	if !hasValue {
		return nil, fmt.Errorf("%w: sync info message without a value", errMalformed)
	}
	m := &Message{Kind: KindInfo}
	vc := cursor{b: value.body}
	v := vc.next()
	if vc.err != nil {
		return nil, fmt.Errorf("sync info message: %w", vc.err)
	}
	if v.tag == 0x80 { // newcookie [0] syncCookie
		m.Info = InfoNewCookie
		m.Cookie = append([]byte{}, v.body...)
		return m, nil
	}
	switch v.tag {
	case 0xa1:
		m.Info = InfoRefreshDelete
	case 0xa2:
		m.Info = InfoRefreshPresent
	case 0xa3:
		m.Info = InfoSyncIDSet
	default:
		return nil, fmt.Errorf("%w: sync info message with tag 0x%02x", errMalformed, v.tag)
	}
	ic := cursor{b: v.body}
	if cookie, ok := ic.optional(tagOctetString); ok {
		m.Cookie = append([]byte{}, cookie.body...)
	}
	// refreshDone defaults to TRUE, refreshDeletes to FALSE.
	flag := m.Info != InfoSyncIDSet
	if b, ok := ic.optional(tagBoolean); ok {
		var err error
		if flag, err = boolean(b.body); err != nil {
			return nil, fmt.Errorf("sync info message: %w", err)
		}
	}
	if m.Info == InfoSyncIDSet {
		m.RefreshDeletes = flag
		set := ic.expect(tagSet, "syncUUIDs")
		uc := cursor{b: set.body}
		for uc.more() {
			u := uc.expect(tagOctetString, "syncUUID")
			if uc.err == nil && len(u.body) != 16 {
				return nil, fmt.Errorf("%w: syncUUID of %d bytes", errMalformed, len(u.body))
			}
			var id UUID
			copy(id[:], u.body)
			m.UUIDs = append(m.UUIDs, id)
		}
		if uc.err != nil {
			return nil, fmt.Errorf("sync info message: %w", uc.err)
		}
	} else {
		m.RefreshDone = flag
	}
	if ic.err != nil {
		return nil, fmt.Errorf("sync info message: %w", ic.err)
	}
	return m, nil
}

// decodeDone decodes the sync done control of a successful SearchResultDone.
func decodeDone(ctrls []byte) (*Message, error) {
	m := &Message{Kind: KindDone}
	val, found, err := control(ctrls, oidSyncDone)
	if !found || err != nil {
		return m, err
	}
	outer := cursor{b: val}
	vc := cursor{b: outer.expect(tagSequence, "syncDoneValue").body}
	if cookie, ok := vc.optional(tagOctetString); ok {
		m.Cookie = append([]byte{}, cookie.body...)
	}
	if b, ok := vc.optional(tagBoolean); ok {
		if m.RefreshDeletes, err = boolean(b.body); err != nil {
			return nil, fmt.Errorf("sync done control: %w", err)
		}
	}
	if err := errors.Join(outer.err, vc.err); err != nil {
		return nil, fmt.Errorf("sync done control: %w", err)
	}
	return m, nil
}

// decodeReference decodes a SearchResultReference.
func decodeReference(op []byte) (*Message, error) {
	m := &Message{Kind: KindReference}
	c := cursor{b: op}
	for c.more() {
		u := c.expect(tagOctetString, "URI")
		if c.err == nil {
			m.Referral = append(m.Referral, string(u.body))
		}
	}
	return m, c.err
}

// result decodes an LDAPResult; a result other than success becomes an
// *ldap.Error, so callers test it with ldap.IsErrorWithCode.
func result(op []byte) error {
	c := cursor{b: op}
	code := c.expect(tagEnumerated, "resultCode")
	matched := c.expect(tagOctetString, "matchedDN")
	diag := c.expect(tagOctetString, "diagnosticMessage")
	if c.err != nil {
		return c.err
	}
	n, err := integer(code.body)
	if err != nil {
		return err
	}
	if n == ldap.LDAPResultSuccess {
		return nil
	}
	msg := string(diag.body)
	if msg == "" {
		msg = ldap.LDAPResultCodeMap[uint16(n)]
	}
	return &ldap.Error{ResultCode: uint16(n), MatchedDN: string(matched.body),
		Err: fmt.Errorf("LDAP result code %d (%s): %s", n, ldap.LDAPResultCodeMap[uint16(n)], msg)}
}
