package listener

import (
	"encoding/json"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"mailsync/event"
)

// The listener writes an event and an entry state per directory entry, and
// the attributes are most of both. Encoding them once by hand and splicing
// them into the two documents costs a fraction of two reflective
// json.Marshal calls; the bytes are the same as encoding/json's
// (encode_test.go holds the two side by side), so consumers and the Msg-Id
// scheme see no difference.

// appendAttrs appends a as json.Marshal encodes an event.Attrs: keys sorted,
// a nil map or value list as null.
func appendAttrs(dst []byte, a event.Attrs) []byte {
	if a == nil {
		return append(dst, "null"...)
	}
	var arr [16]string
	keys := arr[:0]
	for k := range a {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, k)
		dst = append(dst, ':')
		vals := a[k]
		if vals == nil {
			dst = append(dst, "null"...)
			continue
		}
		dst = append(dst, '[')
		for j, v := range vals {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, v)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// appendEvent appends ev as json.Marshal encodes it. newJSON, when not nil,
// is ev.New already encoded by appendAttrs.
func appendEvent(dst []byte, ev *event.Event, newJSON []byte) ([]byte, error) {
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, int64(ev.V), 10)
	dst = append(dst, `,"op":`...)
	dst = appendJSONString(dst, string(ev.Op))
	dst = append(dst, `,"kind":`...)
	dst = appendJSONString(dst, string(ev.Kind))
	dst = append(dst, `,"uuid":`...)
	dst = appendJSONString(dst, ev.UUID)
	dst = append(dst, `,"dn":`...)
	dst = appendJSONString(dst, ev.DN)
	if ev.OldDN != "" {
		dst = append(dst, `,"old_dn":`...)
		dst = appendJSONString(dst, ev.OldDN)
	}
	if len(ev.Old) > 0 {
		dst = append(dst, `,"old":`...)
		dst = appendAttrs(dst, ev.Old)
	}
	if len(ev.New) > 0 {
		dst = append(dst, `,"new":`...)
		if newJSON != nil {
			dst = append(dst, newJSON...)
		} else {
			dst = appendAttrs(dst, ev.New)
		}
	}
	if ev.CSN != "" {
		dst = append(dst, `,"csn":`...)
		dst = appendJSONString(dst, ev.CSN)
	}
	dst = append(dst, `,"at":`...)
	dst, err := appendTime(dst, ev.At)
	if err != nil {
		return nil, err
	}
	return append(dst, '}'), nil
}

// appendEntry appends e as json.Marshal encodes it. attrsJSON, when not
// nil, is e.Attrs already encoded by appendAttrs.
func appendEntry(dst []byte, e *event.Entry, attrsJSON []byte) []byte {
	dst = append(dst, `{"uuid":`...)
	dst = appendJSONString(dst, e.UUID)
	dst = append(dst, `,"dn":`...)
	dst = appendJSONString(dst, e.DN)
	dst = append(dst, `,"kind":`...)
	dst = appendJSONString(dst, string(e.Kind))
	dst = append(dst, `,"attrs":`...)
	if attrsJSON != nil {
		dst = append(dst, attrsJSON...)
	} else {
		dst = appendAttrs(dst, e.Attrs)
	}
	if e.CSN != "" {
		dst = append(dst, `,"csn":`...)
		dst = appendJSONString(dst, e.CSN)
	}
	return append(dst, '}')
}

// appendTime appends t as time.Time's MarshalJSON does (RFC 3339 with
// nanoseconds), which refuses years outside 0..9999.
func appendTime(dst []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		_, err := json.Marshal(t)
		return nil, err
	}
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"'), nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json does with HTML
// escaping on (its default): <, > and & as \u003c etc., control characters
// escaped, invalid UTF-8 as \ufffd, U+2028 and U+2029 escaped.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
