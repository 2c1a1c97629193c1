package aliases

// The full build: the model of a whole directory at once, the work spread
// over the CPUs, the mailbox and domain tables ready before the groups are
// expanded.

import (
	"maps"
	"runtime"
	"slices"
	"sync"

	"mailsync/address"
	"mailsync/event"
)

// buildModel builds the model of a whole directory at once: no ancestor
// walks per entry, every contribution computed once, each table rendered
// straight into its source in one pass over its sorted keys. Parsing and
// contributing are spread over the CPUs, and each index map is written by
// one goroutine, the maps side by side.
func buildModel(hostFQDN string, limit int, entries []event.Entry) *model {
	m := buildModelEarly(hostFQDN, limit, entries, nil, nil)
	m.complete()
	return m
}

// buildModelEarly is buildModel in stages, for Load to run postmap
// alongside the rest of the build. It calls early, when not nil, with the
// mailbox and domain table sources as soon as they are final, before the
// group expansions, and returns once the alias table is rendered and the
// reports are known. put, when not nil, is given every line of the alias
// table once, newline included, in no particular order, before it
// returns: most, the lines of the group keys, as each group's expansion
// is done, while the others are still computed. What only later changes
// use, the reverse membership index and the contributions by UUID, is
// left to complete, which the first change calls: a start is not delayed
// by it.
func buildModelEarly(hostFQDN string, limit int, entries []event.Entry, early func(mailbox, domains []byte), put func(lines []byte)) *model {
	m := newModel(hostFQDN, limit)
	// Sized for the directory up front: growing maps of 100k keys is a
	// good part of a full build otherwise.
	n := len(entries)
	m.byUUID = make(map[string]*entry, n)
	m.byDN = make(map[string][]*entry, n)
	m.aliasOwners = make(owners, n+n/2)
	m.mailboxOwners = make(owners, n)
	m.bulk = true
	es := make([]entry, n)        // one allocation for every entry
	cs := make([]contribution, n) // and for every contribution
	// Entries other than groups contribute without expansions: the
	// mailbox and domain tables are final before any group is expanded.
	inParallel(n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if e := entries[i]; e.UUID != "" {
				es[i].init(e.UUID, e.DN, e.Kind, e.Attrs)
				if !es[i].isGroupish {
					m.contributeInto(&cs[i], &es[i])
				}
			}
		}
	})
	current := m.insertAll(es)
	groupKeys, shared := sharedGroupKeys(es, cs, current)

	var wg sync.WaitGroup
	var lines []aliasKey // sorted, the keys of the entries other than groups
	wg.Go(func() {
		m.setContributions(es, cs, current, false)
		lines = m.aliasLinesOf(es, cs, current, groupKeys)
	})
	nm := 0
	for i := range cs {
		nm += len(cs[i].mailbox)
	}
	mailboxes, domains := make([]string, 0, nm), []string(nil)
	for i := range cs {
		if current[i] {
			mailboxes = append(mailboxes, cs[i].mailbox...)
			domains = append(domains, cs[i].domains...)
		}
	}
	mailboxes = sortedUnique(mailboxes)
	m.mailboxT.fillIdentity(mailboxes)
	m.domainT.fillIdentity(sortedUnique(domains))
	if early != nil {
		early(m.mailboxT.source(), m.domainT.source())
	}
	// A group's contribution is final with its expansion, and so is the
	// line of each of its keys that no other entry may define: rendered
	// then, into chunks put as they fill, and copied into the source.
	var groupAt []int // es index by group number (numberGroups)
	for i := range es {
		if current[i] && es[i].isGroupish {
			groupAt = append(groupAt, i)
		}
	}
	pre := make(map[string][]byte, len(groupAt))
	var chunk []byte
	m.expandAll(es, current, func(g *entry) {
		i := groupAt[g.bulk]
		for _, a := range m.contributeInto(&cs[i], &es[i]).alias {
			if _, ok := shared[a.key]; ok {
				continue
			}
			if len(a.vals) == 1 && a.vals[0] == a.key {
				if _, mailbox := slices.BinarySearch(mailboxes, a.key); mailbox {
					continue // no line: see aliasLineValues
				}
			}
			if n := lineLen(a.key, a.vals) + 1; cap(chunk)-len(chunk) < n {
				if put != nil && len(chunk) > 0 {
					put(chunk)
				}
				chunk = make([]byte, 0, max(n, 256<<10))
			}
			start := len(chunk)
			chunk = appendLine(chunk, a.key, a.vals)
			pre[a.key] = chunk[start:len(chunk):len(chunk)]
			chunk = append(chunk, '\n')
		}
	})
	if put != nil && len(chunk) > 0 {
		put(chunk)
	}
	wg.Wait()
	m.setContributions(es, cs, current, true)
	var fromGroups []aliasKey // values to be looked up
	for i := range es {
		if current[i] && es[i].isGroupish {
			for _, a := range cs[i].alias {
				fromGroups = append(fromGroups, aliasKey{key: a.key})
			}
		}
	}
	slices.SortFunc(fromGroups, byKey)
	fromGroups = slices.CompactFunc(fromGroups, func(a, b aliasKey) bool { return a.key == b.key })
	lines = mergeKeys(make([]aliasKey, 0, len(lines)+len(fromGroups)), lines, fromGroups)
	aliasKeys := make([]string, len(lines))
	for i := range lines {
		aliasKeys[i] = lines[i].key
	}
	m.aliasT.fillPre(aliasKeys, func(i int) []string {
		if l := lines[i]; l.vals != nil {
			return l.vals
		}
		return m.aliasLineValues(aliasKeys[i])
	}, func(i int) []byte {
		if lines[i].vals != nil {
			return nil // not a group's key
		}
		return pre[aliasKeys[i]]
	}, put)
	m.noteProblems(es, cs, current)
	m.later = func() { m.indexLater(es, cs, current) }
	return m
}

// sharedGroupKeys returns the alias keys that a current group may define
// and another current entry too (so that the key's line is known only
// once every contribution is): the keys contributeInto gives a group,
// whatever its expansion.
func sharedGroupKeys(es []entry, cs []contribution, current []bool) (groups map[string]int, shared set) {
	groups = map[string]int{} // key -> groups that may define it
	var keys []string
	for i := range es {
		e := &es[i]
		if !current[i] || !e.isGroupish {
			continue
		}
		keys = keys[:0]
		add := func(attr, v string) {
			if a, err := address.Check(attr, v); err == nil && !slices.Contains(keys, a) {
				keys = append(keys, a)
			}
		}
		for _, v := range e.attrs.get(event.AttrAlternativeAddress) {
			add(event.AttrAlternativeAddress, v)
		}
		if v := e.attrs.First(event.AttrPrimaryAddress); v != "" {
			add(event.AttrPrimaryAddress, v)
		}
		for _, k := range keys {
			groups[k]++
		}
	}
	shared = set{}
	for k, n := range groups {
		if n > 1 {
			shared[k] = struct{}{}
		}
	}
	for i := range cs {
		if current[i] && !es[i].isGroupish {
			for _, a := range cs[i].alias {
				if _, ok := groups[a.key]; ok {
					shared[a.key] = struct{}{}
				}
			}
		}
	}
	return groups, shared
}

// sortedUnique sorts s and drops repeats.
func sortedUnique(s []string) []string {
	if len(s) < 4096 {
		slices.Sort(s)
		return slices.Compact(s)
	}
	a, b := s[:len(s)/2], s[len(s)/2:]
	var wg sync.WaitGroup
	wg.Go(func() { slices.Sort(a) })
	slices.Sort(b)
	wg.Wait()
	return mergeInto(make([]string, 0, len(s)), slices.Compact(a), slices.Compact(b))
}

// insertAll indexes the entries of a full build, and reports which are
// current: not without UUID, nor replaced by a later entry of the same
// UUID. The UUID index is built alongside the DN and member indexes.
func (m *model) insertAll(es []entry) []bool {
	current := make([]bool, len(es))
	var replaced []int
	var wg sync.WaitGroup
	wg.Go(func() {
		var last map[string]int // UUID -> index, made at the first duplicate
		for i := range es {
			uuid := es[i].uuid
			if uuid == "" {
				continue
			}
			if old := m.byUUID[uuid]; old != nil {
				if last == nil {
					last = make(map[string]int, i)
					for j := range i {
						if current[j] {
							last[es[j].uuid] = j
						}
					}
				}
				current[last[uuid]] = false
				replaced = append(replaced, last[uuid])
			}
			m.byUUID[uuid] = &es[i]
			if last != nil {
				last[uuid] = i
			}
			current[i] = true
		}
	})
	for i := range es {
		if es[i].uuid != "" {
			m.indexDN(&es[i])
		}
	}
	wg.Wait()
	// A replaced entry leaves the DN index as insert would have it leave it.
	for _, i := range replaced {
		m.unindexDN(&es[i])
	}
	return current
}

// noteProblems records, for the reports of a full build, the entries with
// invalid addresses and the groups expanding past the limit, with the
// contributions of the former (the reports quote them).
func (m *model) noteProblems(es []entry, cs []contribution, current []bool) {
	for i := range es {
		e, c := &es[i], &cs[i]
		if !current[i] || c.empty() {
			continue
		}
		if len(c.invalid) > 0 {
			m.invalid[e.uuid] = struct{}{}
			m.contrib[e.uuid] = c
		}
		if e.isGroupish && m.limit > 0 && len(m.exp[e.uuid]) > m.limit && len(c.alias) > 0 {
			m.overLimit[e.uuid] = struct{}{}
		}
	}
}

// complete makes what a full build left for later (see buildModelEarly),
// once; every change calls it first.
func (m *model) complete() {
	if f := m.later; f != nil {
		m.later = nil
		f()
	}
}

// indexLater completes the model of a full build with what only later
// changes use: the reverse membership index and the contributions by UUID.
func (m *model) indexLater(es []entry, cs []contribution, current []bool) {
	var wg sync.WaitGroup
	wg.Go(func() {
		m.parents = make(map[string][]string, len(es)) // empty until now
		for i := range es {
			if current[i] {
				m.indexMembers(es[i].uuid, es[i].members)
			}
		}
	})
	// Sized for the directory; it holds only the contributions with
	// invalid addresses so far (noteProblems).
	contrib := make(map[string]*contribution, len(es))
	maps.Copy(contrib, m.contrib)
	m.contrib = contrib
	for i := range es {
		if current[i] && !cs[i].empty() {
			m.contrib[es[i].uuid] = &cs[i]
		}
	}
	wg.Wait()
	m.bulk = false
	m.entrySlab, m.uuidSlab, m.contribSlab, m.contribSlab2 = nil, nil, nil, nil
}

// setContributions records the contributions of the current entries, of
// groups or of the others, for a full build in the owner indexes the
// tables are rendered from: each index is written by its own goroutine.
func (m *model) setContributions(es []entry, cs []contribution, current []bool, groups bool) {
	each := func(f func(e *entry, c *contribution)) {
		for i := range es {
			if current[i] && es[i].isGroupish == groups && !cs[i].empty() {
				f(&es[i], &cs[i])
			}
		}
	}
	_, _, aliasSlab, mailboxSlab := m.slabs()
	var wg sync.WaitGroup
	wg.Go(func() {
		each(func(e *entry, c *contribution) {
			for _, k := range c.mailbox {
				m.mailboxOwners.add(k, c, mailboxSlab)
			}
			for _, k := range c.domains {
				m.domainOwners.add(k, c, nil)
			}
		})
	})
	each(func(e *entry, c *contribution) {
		for _, a := range c.alias {
			if m.aliasOwners.add(a.key, c, aliasSlab) > 1 {
				m.collisions[a.key] = struct{}{}
			}
		}
	})
	wg.Wait()
}

// inParallel calls f over [0, n) cut into one range per CPU.
func inParallel(n int, f func(lo, hi int)) {
	parts := min(runtime.GOMAXPROCS(0), max(n/1024, 1))
	var wg sync.WaitGroup
	for p := range parts {
		lo, hi := n*p/parts, n*(p+1)/parts
		if p == parts-1 {
			f(lo, hi)
			break
		}
		wg.Go(func() { f(lo, hi) })
	}
	wg.Wait()
}

// fillIdentity fills a table mapping each key to itself.
func (r *rendered) fillIdentity(keys []string) {
	r.fill(keys, func(i int) []string { return keys[i : i+1] })
}
