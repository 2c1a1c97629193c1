package aliases

import (
	"slices"
	"strings"

	"mailsync/postmap"
)

// rendered is one table's source kept as a line per key, so that a change
// re-renders only the keys it touched, the file is reassembled without
// sorting, and the keys whose line changed since the last write are known
// (for an incremental postmap).
type rendered struct {
	lines map[string]string // key -> line, without the newline
	keys  []string          // sorted keys of lines, less removed, plus added
	added []string          // keys new to lines since keys was merged
	gone  set               // keys that left lines since keys was merged
	size  int               // bytes of the source: lines and newlines
	src   []byte            // the source as fill made it, until a change

	// Left by fill for index to turn into lines and keys.
	filled *filled

	changed set // keys whose line changed since the last take
}

func newRendered() *rendered {
	return &rendered{lines: map[string]string{}, gone: set{}, changed: set{}}
}

// set makes line the key's line; "" removes the key. It reports whether the
// line changed.
func (r *rendered) set(k, line string) bool {
	r.index()
	old, had := r.lines[k]
	if old == line && (had || line == "") {
		return false
	}
	switch {
	case line == "":
		delete(r.lines, k)
		r.size -= len(old) + 1
		r.gone[k] = struct{}{}
	case had:
		r.lines[k] = line
		r.size += len(line) - len(old)
	default:
		r.lines[k] = line
		r.size += len(line) + 1
		if _, was := r.gone[k]; was {
			delete(r.gone, k) // still in keys
		} else {
			r.added = append(r.added, k)
		}
	}
	r.changed[k] = struct{}{}
	r.src = nil
	return true
}

// sortedKeys merges the keys added and removed since the last call into the
// sorted key list: O(n + a log a), not a full sort.
func (r *rendered) sortedKeys() []string {
	r.index()
	if len(r.added) == 0 && len(r.gone) == 0 {
		return r.keys
	}
	slices.Sort(r.added)
	out := make([]string, 0, len(r.lines))
	i, j := 0, 0
	for i < len(r.keys) || j < len(r.added) {
		var k string
		if j == len(r.added) || (i < len(r.keys) && r.keys[i] < r.added[j]) {
			k = r.keys[i]
			i++
		} else {
			k = r.added[j]
			j++
		}
		if _, g := r.gone[k]; !g {
			out = append(out, k)
		}
	}
	r.keys, r.added, r.gone = out, nil, set{}
	return out
}

// source is the table source: one line per key, keys sorted.
func (r *rendered) source() []byte {
	if r.src != nil {
		return r.src
	}
	keys := r.sortedKeys()
	b := make([]byte, 0, r.size)
	for _, k := range keys {
		b = append(b, r.lines[k]...)
		b = append(b, '\n')
	}
	return b
}

// take returns the changes since the last take and forgets them.
func (r *rendered) take() postmap.Delta {
	r.index()
	var d postmap.Delta
	for k := range r.changed {
		if l, ok := r.lines[k]; ok {
			d.Put = append(d.Put, l)
		} else {
			d.Del = append(d.Del, k)
		}
	}
	r.changed = set{}
	return d
}

// render writes the three table sources, keys sorted, one line each.
func (m *model) render() (alias, mailbox, domains []byte) {
	m.settle()
	return m.aliasT.source(), m.mailboxT.source(), m.domainT.source()
}

// aliasLine renders one alias key's line, or "" when the key has no entry.
func (m *model) aliasLine(k string) string {
	vals := m.aliasLineValues(k)
	if vals == nil {
		return ""
	}
	// Measured first: a group's line runs to kilobytes, and a burst
	// re-renders thousands of them.
	return string(appendLine(make([]byte, 0, lineLen(k, vals)), k, vals))
}

// aliasLineValues returns the values of one alias key's line, or nil when
// the key has no entry.
func (m *model) aliasLineValues(k string) []string {
	vals := m.aliasValues(k)
	if len(vals) == 0 {
		return nil
	}
	if len(vals) == 1 && vals[0] == k {
		if _, mailbox := m.mailboxOwners[k]; mailbox {
			return nil // a mailbox mapping to itself: the same as no entry
		}
		// Kept, so the address is accepted: a remote shared folder
		// (ldap.sharedfolderremote, routed by the transport map).
	}
	return vals
}

// appendLine appends a table line, without the newline: the key, a space
// and the values separated by commas.
func appendLine(b []byte, k string, vals []string) []byte {
	b = append(b, k...)
	b = append(b, ' ')
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, v...)
	}
	return b
}

// lineLen is the length of appendLine's line.
func lineLen(k string, vals []string) int {
	n := len(k) + len(vals) // the space and the commas
	for _, v := range vals {
		n += len(v)
	}
	return n
}

// settle re-renders the lines of the keys touched since the last settle and
// reports whether any table's source changed.
func (m *model) settle() bool {
	changed := false
	for k := range m.dirtyAlias {
		if m.aliasT.set(k, m.aliasLine(k)) {
			changed = true
		}
	}
	for k := range m.dirtyMailbox {
		line := ""
		if _, ok := m.mailboxOwners[k]; ok {
			line = k + " " + k
		}
		if m.mailboxT.set(k, line) {
			changed = true
		}
	}
	for k := range m.dirtyDomain {
		line := ""
		if _, ok := m.domainOwners[k]; ok {
			line = k + " " + k
		}
		if m.domainT.set(k, line) {
			changed = true
		}
	}
	m.dirtyAlias, m.dirtyMailbox, m.dirtyDomain = set{}, set{}, set{}
	return changed
}

// fill renders an empty table from sorted keys in one go, straight into
// its source; vals gives the values of keys[i], nil for no line. No change
// is recorded: a table filled this way is written whole. The per-key lines
// are indexed later, by index.
//
// The lines are measured first, so that the source is allocated once at
// its size and each line written in its place, both passes spread over the
// CPUs.
func (r *rendered) fill(keys []string, vals func(i int) []string) {
	r.fillPre(keys, vals, nil, nil)
}

// fillPre is fill with some lines rendered already: pre, when not nil,
// gives keys[i]'s line (without the newline) when it has been, nil
// otherwise; those lines are copied. rest, when not nil, is given the
// other lines of the source, in runs, once the source is complete.
func (r *rendered) fillPre(keys []string, vals func(i int) []string, pre func(i int) []byte, rest func([]byte)) {
	lines := make([][]string, len(keys))
	var pres [][]byte
	if pre != nil {
		pres = make([][]byte, len(keys))
	}
	ends := make([]int, len(keys)) // end of each key's line in src; -1: none
	inParallel(len(keys), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if pres != nil {
				if pres[i] = pre(i); pres[i] != nil {
					ends[i] = len(pres[i])
					continue
				}
			}
			if lines[i] = vals(i); lines[i] != nil {
				ends[i] = lineLen(keys[i], lines[i])
			} else {
				ends[i] = -1
			}
		}
	})
	size := 0
	for i, n := range ends {
		if n < 0 {
			continue
		}
		size += n + 1
		ends[i] = size - 1
	}
	src := make([]byte, size)
	inParallel(len(keys), func(lo, hi int) {
		start := 0
		for i := lo - 1; i >= 0; i-- {
			if ends[i] >= 0 {
				start = ends[i] + 1
				break
			}
		}
		for i := lo; i < hi; i++ {
			if ends[i] < 0 {
				continue
			}
			if pres != nil && pres[i] != nil {
				copy(src[start:], pres[i])
			} else {
				appendLine(src[start:start], keys[i], lines[i])
			}
			src[ends[i]] = '\n'
			start = ends[i] + 1
		}
	})
	if rest != nil {
		run := -1 // start of the run of lines not pre-rendered, if any
		start := 0
		for i, end := range ends {
			if end < 0 {
				continue
			}
			if pres != nil && pres[i] != nil {
				if run >= 0 {
					rest(src[run:start])
					run = -1
				}
			} else if run < 0 {
				run = start
			}
			start = end + 1
		}
		if run >= 0 {
			rest(src[run:])
		}
	}
	r.size = len(src)
	r.src = src
	r.filled = &filled{keys: keys, ends: ends}
}

// filled is what fill leaves for index.
type filled struct {
	keys []string
	ends []int
}

// index makes the lines and sorted keys of a filled table, each line a
// piece of the source. Load has it done while postmap runs; otherwise the
// first use does it.
func (r *rendered) index() {
	f := r.filled
	if f == nil {
		return
	}
	r.filled = nil
	// The lines share one copy of src as a string: one allocation and
	// copy for the whole table, not one a line. src itself stays for
	// source() until the first change.
	text := string(r.src)
	r.lines = make(map[string]string, len(f.keys))
	r.keys = make([]string, 0, len(f.keys))
	start := 0
	for i, k := range f.keys {
		if f.ends[i] < 0 {
			continue
		}
		r.lines[k] = text[start:f.ends[i]]
		r.keys = append(r.keys, k)
		start = f.ends[i] + 1
	}
}

// byKey orders the alias keys a full build collects, each with the values
// of its line (aliasLinesOf).
func byKey(a, b aliasKey) int { return strings.Compare(a.key, b.key) }

// aliasLinesOf returns the alias keys of the current entries other than
// groups that have a line, sorted, with their values; a key another entry
// defines too, or one of groupKeys (which a group may define), once with
// nil values. The owner indexes must hold those entries' contributions
// (setContributions).
func (m *model) aliasLinesOf(es []entry, cs []contribution, current []bool, groupKeys map[string]int) []aliasKey {
	var out []aliasKey
	for i := range cs {
		if !current[i] || es[i].isGroupish {
			continue
		}
		c := &cs[i]
		for _, a := range c.alias {
			_, collided := m.collisions[a.key]
			_, group := groupKeys[a.key]
			switch {
			case collided || group:
				out = append(out, aliasKey{key: a.key})
			case len(a.vals) == 0:
			case len(a.vals) == 1 && a.vals[0] == a.key && slices.Contains(c.mailbox, a.key):
				// A user's own address: no line (see aliasLineValues).
			case len(a.vals) == 1 && a.vals[0] == a.key:
				if _, mailbox := m.mailboxOwners[a.key]; !mailbox {
					out = append(out, a)
				}
			default:
				out = append(out, a)
			}
		}
	}
	slices.SortFunc(out, byKey)
	// Only keys with nil values can come twice.
	return slices.CompactFunc(out, func(a, b aliasKey) bool { return a.key == b.key })
}

// mergeKeys appends the union of a and b, sorted by key, to dst, which
// must not overlap them; a key in both is kept once, with nil values.
func mergeKeys(dst, a, b []aliasKey) []aliasKey {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := byKey(a[i], b[j]); {
		case c < 0:
			dst = append(dst, a[i])
			i++
		case c > 0:
			dst = append(dst, b[j])
			j++
		default:
			dst = append(dst, aliasKey{key: a[i].key})
			i++
			j++
		}
	}
	dst = append(dst, a[i:]...)
	return append(dst, b[j:]...)
}
