package event

// Decoding Attrs from JSON with few allocations. Every handler holds the
// attributes of the entries it loads (the aliases model keeps one Attrs per
// entry of the directory), and the runner decodes every entry at a start:
// encoding/json gives each attribute name, each value and each value list
// an allocation of its own, which at 100k users was some 80 MB of the
// daemon's peak heap. Here an entry's names are the package's own strings,
// its values share one string and one []string, and the values that repeat
// across the directory (object classes, the home server) are shared
// between entries.

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"unicode/utf8"
)

// UnmarshalJSON decodes an object of string arrays exactly as encoding/json
// decodes it into a map[string][]string (null gives a nil map, a null list a
// nil value, [] an empty one, a later duplicate key wins), replacing what a
// held. The common form (no escapes, valid UTF-8) is decoded here; any
// other goes through encoding/json and gives what it gives.
func (a *Attrs) UnmarshalJSON(data []byte) error {
	if m, ok := decodeAttrs(data); ok {
		*a = m
		return nil
	}
	var plain map[string][]string
	if err := json.Unmarshal(data, &plain); err != nil {
		return err
	}
	*a = Attrs(plain)
	return nil
}

// followedName maps each followed attribute's spelling to the package's
// own string for it.
var followedName = func() map[string]string {
	m := make(map[string]string, len(Followed))
	for _, a := range Followed {
		m[a] = a
	}
	return m
}()

// shared lists the attributes whose values repeat across a directory (a
// few object classes, one home server per host, a few quotas): their
// values are interned.
var shared = map[string]bool{AttrObjectClass: true, AttrHomeServer: true, AttrForwardCopyToSelf: true, AttrQuota: true, AttrCanonicalRewrite: true}

// interned holds the values of shared attributes seen so far, up to
// maxInterned of them (a directory with unusual values gets no more
// entries, not an ever growing table).
var interned struct {
	mu sync.RWMutex
	m  map[string]string
}

const maxInterned = 4096

func intern(b []byte) (string, bool) {
	interned.mu.RLock()
	s, ok := interned.m[string(b)]
	interned.mu.RUnlock()
	if ok {
		return s, true
	}
	interned.mu.Lock()
	defer interned.mu.Unlock()
	if s, ok := interned.m[string(b)]; ok {
		return s, true
	}
	if len(interned.m) >= maxInterned {
		return "", false
	}
	if interned.m == nil {
		interned.m = make(map[string]string)
	}
	s = string(b)
	interned.m[s] = s
	return s, true
}

// attrSpan is one attribute of the object being decoded: its name and its
// values, the range [lo, hi) of the decoder's value list (lo -1: null).
type attrSpan struct {
	name   string
	lo, hi int
}

// valueSpan is one value: a range of the input, or an interned string.
type valueSpan struct {
	lo, hi int
	s      string
	inline bool // s holds the value
}

// decodeAttrs decodes data in the common form; ok is false for any other
// (escapes, invalid UTF-8, a syntax error, null lists), which the caller
// leaves to encoding/json.
func decodeAttrs(data []byte) (Attrs, bool) {
	p := attrParser{data: data}
	p.ws()
	if p.lit("null") {
		p.ws()
		return nil, p.i == len(data)
	}
	if !p.byte('{') {
		return nil, false
	}
	var attrBuf [16]attrSpan
	var valBuf [32]valueSpan
	attrs, vals := attrBuf[:0], valBuf[:0]
	blob := 0 // bytes of the values not interned
	ok := p.elements('}', func() bool {
		lo, hi, ok := p.str()
		if !ok {
			return false
		}
		name, known := followedName[string(data[lo:hi])] // no allocation
		if !known {
			name = string(data[lo:hi])
		}
		p.ws()
		if !p.byte(':') {
			return false
		}
		p.ws()
		if !p.byte('[') {
			return false
		}
		first := len(vals)
		listed := p.elements(']', func() bool {
			vlo, vhi, ok := p.str()
			if !ok {
				return false
			}
			v := valueSpan{lo: vlo, hi: vhi}
			if shared[name] {
				v.s, v.inline = intern(data[vlo:vhi])
			}
			if !v.inline {
				blob += vhi - vlo
			}
			vals = append(vals, v)
			return true
		})
		if !listed {
			return false
		}
		attrs = append(attrs, attrSpan{name: name, lo: first, hi: len(vals)})
		return true
	})
	if !ok {
		return nil, false
	}
	p.ws()
	if p.i != len(data) {
		return nil, false
	}
	// One string for the values, one []string for the lists; each list
	// capped at its length, so an append to one never writes into the next.
	var sb strings.Builder
	sb.Grow(blob)
	for _, v := range vals {
		if !v.inline {
			sb.Write(data[v.lo:v.hi])
		}
	}
	all, off := sb.String(), 0
	strs := make([]string, len(vals))
	for i, v := range vals {
		if v.inline {
			strs[i] = v.s
			continue
		}
		n := v.hi - v.lo
		strs[i] = all[off : off+n]
		off += n
	}
	m := make(Attrs, len(attrs))
	for _, at := range attrs {
		m[at.name] = strs[at.lo:at.hi:at.hi]
	}
	return m, true
}

type attrParser struct {
	data []byte
	i    int
}

func (p *attrParser) ws() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *attrParser) byte(c byte) bool {
	if p.i < len(p.data) && p.data[p.i] == c {
		p.i++
		return true
	}
	return false
}

// elements reads the rest of a list after its opening bracket: elements
// read by elem, separated by commas, up to close.
func (p *attrParser) elements(close byte, elem func() bool) bool {
	p.ws()
	if p.byte(close) {
		return true
	}
	for {
		p.ws()
		if !elem() {
			return false
		}
		p.ws()
		if p.byte(close) {
			return true
		}
		if !p.byte(',') {
			return false
		}
	}
}

func (p *attrParser) lit(s string) bool {
	if bytes.HasPrefix(p.data[p.i:], []byte(s)) {
		p.i += len(s)
		return true
	}
	return false
}

// str reads a string literal with no escapes and valid UTF-8 (which
// encoding/json decodes to its bytes as they are) and returns the range of
// its contents; ok is false for any other.
func (p *attrParser) str() (lo, hi int, ok bool) {
	if !p.byte('"') {
		return 0, 0, false
	}
	lo = p.i
	high := false
	for p.i < len(p.data) {
		c := p.data[p.i]
		switch {
		case c == '"':
			hi = p.i
			p.i++
			if high && !utf8.Valid(p.data[lo:hi]) {
				return 0, 0, false
			}
			return lo, hi, true
		case c == '\\' || c < 0x20:
			return 0, 0, false
		case c >= utf8.RuneSelf:
			high = true
		}
		p.i++
	}
	return 0, 0, false
}
