package event

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Every handler decodes every event, and a start decodes every stored
// entry: with encoding/json that was most of the CPU a burst of changes
// cost (about 60 µs an event at 100k users). The listener writes both
// documents in one form (listener/encode.go: the fields in order, strings
// without escapes in the usual case); the decoders below read that form
// directly and hand anything else (escapes, non-UTF-8, unknown or repeated
// keys, other value types) to encoding/json, so the result is always what
// json.Unmarshal gives (decode_test.go and FuzzDecode hold the two side by
// side).

// Decode parses data into ev as json.Unmarshal would into a zero Event.
func Decode(data []byte, ev *Event) error {
	*ev = Event{}
	if d := (decoder{b: data}); d.event(ev) {
		return nil
	}
	*ev = Event{}
	return json.Unmarshal(data, ev)
}

// DecodeEntry parses data into e as json.Unmarshal would into a zero Entry.
func DecodeEntry(data []byte, e *Entry) error {
	*e = Entry{}
	if d := (decoder{b: data}); d.entry(e) {
		return nil
	}
	*e = Entry{}
	return json.Unmarshal(data, e)
}

// decoder reads the listener's form of a document; each method reports
// false on anything outside it, leaving the document to encoding/json.
type decoder struct {
	b      []byte
	i      int
	keyEnd int   // the offset of the closing quote of the key just read
	spans  []int // scratch for attrs
}

func (d *decoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// is consumes c, after white space, if it comes next.
func (d *decoder) is(c byte) bool {
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// raw reads a string without escapes or control characters and returns
// its bytes, quotes excluded; ok is false for any other value.
func (d *decoder) raw() (b []byte, ok bool) {
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return nil, false
	}
	start := d.i + 1
	ascii := true
	for j := start; j < len(d.b); j++ {
		for j < len(d.b) && plain[d.b[j]] {
			j++
		}
		if j == len(d.b) {
			break
		}
		switch c := d.b[j]; {
		case c == '"':
			b = d.b[start:j]
			if !ascii && !utf8.Valid(b) {
				return nil, false // encoding/json replaces invalid bytes
			}
			d.i = j + 1
			return b, true
		case c >= utf8.RuneSelf:
			ascii = false
		default: // an escape or a control character
			return nil, false
		}
	}
	return nil, false
}

// plain tells the bytes a string holds as they are: printable ASCII but
// the quote and the backslash.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func (d *decoder) str() (string, bool) {
	b, ok := d.raw()
	return string(b), ok
}

// object reads {"key": value, ...}, calling field after each key with the
// decoder before its value; field reads the value.
func (d *decoder) object(field func(key []byte) bool) bool {
	if !d.is('{') {
		return false
	}
	if d.is('}') {
		return true
	}
	for {
		key, ok := d.raw()
		d.keyEnd = d.i - 1
		if !ok || !d.is(':') || !field(key) {
			return false
		}
		if d.is(',') {
			continue
		}
		return d.is('}')
	}
}

// attrs reads an Attrs object, or null. Its values are cut from one
// string copy of the object's bytes, not copied one by one (a group's
// members are most of an event), and the names mailsync follows take the
// constants' strings: a few allocations an object, not one a value. The
// copy is the object's own, so an entry kept from an event's new state
// does not hold the event's old state in memory.
func (d *decoder) attrs() (Attrs, bool) {
	if d.null() {
		return nil, true
	}
	d.ws()
	start := d.i
	// spans: per attribute its name's offsets and value count (-1: null),
	// then the offsets of its values.
	spans := d.spans[:0]
	ok := d.object(func(key []byte) bool {
		at := len(spans)
		ks := d.keyEnd - start - len(key)
		spans = append(spans, 0, 0, 0)
		if d.null() {
			spans[at+2] = -1
		} else {
			if !d.is('[') {
				return false
			}
			if !d.is(']') {
				for {
					b, ok := d.raw()
					if !ok {
						return false
					}
					end := d.i - 1 - start
					spans = append(spans, end-len(b), end)
					spans[at+2]++
					if d.is(',') {
						continue
					}
					if !d.is(']') {
						return false
					}
					break
				}
			}
		}
		spans[at], spans[at+1] = ks, ks+len(key)
		return true
	})
	d.spans = spans
	if !ok {
		return nil, false
	}
	src := string(d.b[start:d.i])
	a := make(Attrs, countAttrs(spans))
	for k := 0; k < len(spans); {
		name := src[spans[k]:spans[k+1]]
		if c, ok := followed[name]; ok {
			name = c
		}
		n := spans[k+2]
		k += 3
		if n < 0 {
			a[name] = nil
			continue
		}
		vals := make([]string, n)
		for v := range vals {
			vals[v] = src[spans[k]:spans[k+1]]
			k += 2
		}
		a[name] = vals
	}
	return a, true
}

// countAttrs is how many attributes spans describe.
func countAttrs(spans []int) int {
	n := 0
	for k := 0; k < len(spans); n++ {
		k += 3 + 2*max(spans[k+2], 0)
	}
	return n
}

// followed maps each followed attribute's name to itself.
var followed = func() map[string]string {
	m := make(map[string]string, len(Followed))
	for _, a := range Followed {
		m[a] = a
	}
	return m
}()

func (d *decoder) null() bool {
	d.ws()
	if len(d.b)-d.i >= 4 && string(d.b[d.i:d.i+4]) == "null" {
		d.i += 4
		return true
	}
	return false
}

// int reads a JSON integer that fits an int.
func (d *decoder) int() (int, bool) {
	d.ws()
	start := d.i
	if d.i < len(d.b) && d.b[d.i] == '-' {
		d.i++
	}
	digits := d.i
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		d.i++
	}
	if d.i == digits || (d.b[digits] == '0' && d.i > digits+1) {
		return 0, false
	}
	if d.i < len(d.b) && (d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		return 0, false
	}
	n, err := strconv.Atoi(string(d.b[start:d.i]))
	return n, err == nil
}

// end reports whether only white space is left.
func (d *decoder) end() bool {
	d.ws()
	return d.i == len(d.b)
}

// once records key among the keys seen (a bit each); a key given twice is
// left to encoding/json, whose rules for that differ by type.
func once(seen *uint, bit uint) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

func (d *decoder) event(ev *Event) bool {
	var seen uint
	ok := d.object(func(key []byte) bool {
		var ok bool
		switch string(key) {
		case "v":
			ev.V, ok = d.int()
			return ok && once(&seen, 1<<0)
		case "op":
			var s string
			s, ok = d.str()
			ev.Op = Op(s)
			return ok && once(&seen, 1<<1)
		case "kind":
			var s string
			s, ok = d.str()
			ev.Kind = Kind(s)
			return ok && once(&seen, 1<<2)
		case "uuid":
			ev.UUID, ok = d.str()
			return ok && once(&seen, 1<<3)
		case "dn":
			ev.DN, ok = d.str()
			return ok && once(&seen, 1<<4)
		case "old_dn":
			ev.OldDN, ok = d.str()
			return ok && once(&seen, 1<<5)
		case "old":
			ev.Old, ok = d.attrs()
			return ok && once(&seen, 1<<6)
		case "new":
			ev.New, ok = d.attrs()
			return ok && once(&seen, 1<<7)
		case "csn":
			ev.CSN, ok = d.str()
			return ok && once(&seen, 1<<8)
		case "at":
			d.ws()
			start := d.i
			if _, ok = d.raw(); !ok {
				return false
			}
			return ev.At.UnmarshalJSON(d.b[start:d.i]) == nil && once(&seen, 1<<9)
		}
		return false
	})
	return ok && d.end()
}

func (d *decoder) entry(e *Entry) bool {
	var seen uint
	ok := d.object(func(key []byte) bool {
		var ok bool
		switch string(key) {
		case "uuid":
			e.UUID, ok = d.str()
			return ok && once(&seen, 1<<0)
		case "dn":
			e.DN, ok = d.str()
			return ok && once(&seen, 1<<1)
		case "kind":
			var s string
			s, ok = d.str()
			e.Kind = Kind(s)
			return ok && once(&seen, 1<<2)
		case "attrs":
			e.Attrs, ok = d.attrs()
			return ok && once(&seen, 1<<3)
		case "csn":
			e.CSN, ok = d.str()
			return ok && once(&seen, 1<<4)
		}
		return false
	})
	return ok && d.end()
}
