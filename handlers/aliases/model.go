package aliases

import (
	"fmt"
	"sort"
	"strings"

	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
)

// entry is one directory object as the model holds it.
type entry struct {
	uuid  string
	dn    string
	ndn   string
	kind  event.Kind
	attrs event.Attrs
	// members are the normalised uniqueMember DNs of a group, in order,
	// with the spelling found in the directory alongside for reports.
	members    []string
	memberDNs  []string
	isGroupish bool
}

// contribution is what one entry puts into the three maps.
type contribution struct {
	alias   map[string][]string // key -> sorted values
	mailbox []string
	domains []string
	invalid []string // addresses skipped as malformed
}

// set is a string set.
type set map[string]struct{}

// model is the directory index and the maps derived from it. It is not
// safe for concurrent use; the Handler serialises access.
type model struct {
	hostFQDN string
	limit    int

	byUUID  map[string]*entry
	byDN    map[string][]string // normalised DN -> UUIDs carrying it, sorted
	parents map[string]set      // normalised member DN -> UUIDs of the groups listing it

	exp     map[string][]string // group UUID -> expansion (member addresses, sorted)
	missing map[string][]string // group UUID -> member DNs not in the index
	cycles  map[string][]string // sorted UUIDs joined by " " -> UUIDs of one cycle
	inCycle map[string]string   // group UUID -> key into cycles
	contrib map[string]contribution

	aliasOwners   map[string][]string // alias key -> UUIDs contributing
	collisions    set                 // alias keys with more than one owner
	invalid       set                 // UUIDs whose contribution skipped an address
	overLimit     set                 // group UUIDs with an address expanding past the limit
	mailboxOwners map[string][]string // mailbox key -> UUIDs contributing
	domainOwners  map[string][]string

	// The rendered tables, and the keys whose lines need re-rendering.
	aliasT, mailboxT, domainT             *rendered
	dirtyAlias, dirtyMailbox, dirtyDomain set
	bulk                                  bool // buildModel renders everything at the end
}

func newModel(hostFQDN string, limit int) *model {
	return &model{
		hostFQDN:      strings.ToLower(hostFQDN),
		limit:         limit,
		byUUID:        map[string]*entry{},
		byDN:          map[string][]string{},
		parents:       map[string]set{},
		exp:           map[string][]string{},
		missing:       map[string][]string{},
		cycles:        map[string][]string{},
		inCycle:       map[string]string{},
		contrib:       map[string]contribution{},
		aliasOwners:   map[string][]string{},
		collisions:    set{},
		invalid:       set{},
		overLimit:     set{},
		mailboxOwners: map[string][]string{},
		domainOwners:  map[string][]string{},
		aliasT:        newRendered(),
		mailboxT:      newRendered(),
		domainT:       newRendered(),
		dirtyAlias:    set{},
		dirtyMailbox:  set{},
		dirtyDomain:   set{},
	}
}

// normDN normalises a DN for comparison: attribute types and values
// lowercased, spaces around separators dropped. Most DNs need no escaping,
// so they skip the full parser.
func normDN(dn string) string {
	if strings.ContainsAny(dn, "\\\"+#;<>") {
		if p, err := ldap.ParseDN(dn); err == nil {
			parts := make([]string, 0, len(p.RDNs))
			for _, r := range p.RDNs {
				as := make([]string, 0, len(r.Attributes))
				for _, a := range r.Attributes {
					as = append(as, strings.ToLower(a.Type)+"="+strings.ToLower(a.Value))
				}
				sort.Strings(as)
				parts = append(parts, strings.Join(as, "+"))
			}
			return strings.Join(parts, ",")
		}
	}
	rdns := strings.Split(dn, ",")
	for i, r := range rdns {
		t, v, _ := strings.Cut(r, "=")
		rdns[i] = strings.ToLower(strings.TrimSpace(t)) + "=" + strings.ToLower(strings.TrimSpace(v))
	}
	return strings.Join(rdns, ",")
}

func newEntry(uuid, dn string, kind event.Kind, attrs event.Attrs) *entry {
	if kind == "" {
		kind, _ = event.KindOf(attrs)
	}
	e := &entry{uuid: uuid, dn: dn, ndn: normDN(dn), kind: kind, attrs: attrs}
	if kind == event.KindGroup {
		e.isGroupish = true
		for _, m := range attrs[event.AttrUniqueMember] {
			e.members = append(e.members, normDN(m))
			e.memberDNs = append(e.memberDNs, m)
		}
	}
	return e
}

// put inserts or replaces an entry and returns the UUIDs whose maps may
// change: the entry itself, and every group that lists its old or new DN,
// with their ancestors.
func (m *model) put(e *entry) set {
	old := m.insert(e)
	seeds := []string{e.ndn}
	if old != nil && old.ndn != e.ndn {
		seeds = append(seeds, old.ndn)
	}
	return m.ancestors(e.uuid, seeds)
}

// insert inserts or replaces an entry in the index and returns the entry
// it replaced.
func (m *model) insert(e *entry) *entry {
	old := m.byUUID[e.uuid]
	m.remove(old)
	m.byUUID[e.uuid] = e
	ids := append(m.byDN[e.ndn], e.uuid)
	sort.Strings(ids)
	m.byDN[e.ndn] = ids
	for _, mem := range e.members {
		ps := m.parents[mem]
		if ps == nil {
			ps = set{}
			m.parents[mem] = ps
		}
		ps[e.uuid] = struct{}{}
	}
	return old
}

// lookup resolves a normalised DN to its entry, or nil.
func (m *model) lookup(ndn string) *entry {
	if ids := m.byDN[ndn]; len(ids) > 0 {
		return m.byUUID[ids[0]]
	}
	return nil
}

// del removes an entry by UUID and returns the UUIDs whose maps may change.
func (m *model) del(uuid string) set {
	old := m.byUUID[uuid]
	if old == nil {
		return set{}
	}
	m.remove(old)
	delete(m.byUUID, uuid)
	return m.ancestors(uuid, []string{old.ndn})
}

func (m *model) remove(old *entry) {
	if old == nil {
		return
	}
	// Two entries may carry the same DN for a while (a delete and an add
	// travelling on different subjects); the smallest UUID wins lookups.
	ids := m.byDN[old.ndn]
	for i, u := range ids {
		if u == old.uuid {
			ids = append(ids[:i:i], ids[i+1:]...)
			break
		}
	}
	if len(ids) == 0 {
		delete(m.byDN, old.ndn)
	} else {
		m.byDN[old.ndn] = ids
	}
	for _, mem := range old.members {
		if ps := m.parents[mem]; ps != nil {
			delete(ps, old.uuid)
			if len(ps) == 0 {
				delete(m.parents, mem)
			}
		}
	}
}

// ancestors returns uuid plus every group reaching one of the DNs through
// uniqueMember, transitively: the reverse membership index walked upwards.
func (m *model) ancestors(uuid string, dns []string) set {
	out := set{uuid: {}}
	queue := append([]string(nil), dns...)
	for len(queue) > 0 {
		dn := queue[0]
		queue = queue[1:]
		for g := range m.parents[dn] {
			if _, seen := out[g]; seen {
				continue
			}
			out[g] = struct{}{}
			if ge := m.byUUID[g]; ge != nil {
				queue = append(queue, ge.ndn)
			}
		}
	}
	return out
}

// recompute brings the expansions, contributions and owner indexes up to
// date for the UUIDs in changed (which must be closed under ancestors).
func (m *model) recompute(changed set) {
	m.expand(changed)
	for uuid := range changed {
		m.setContribution(uuid, m.contribute(m.byUUID[uuid]))
	}
}

// expand recomputes the group expansions of the groups in affected with
// Tarjan's algorithm over the membership graph restricted to them. Groups
// outside affected keep their expansion: since affected is closed under
// ancestors, no cycle crosses its border.
func (m *model) expand(affected set) {
	// Forget the old results of the affected groups.
	for uuid := range affected {
		delete(m.exp, uuid)
		delete(m.missing, uuid)
		if k, ok := m.inCycle[uuid]; ok {
			for _, u := range m.cycles[k] {
				delete(m.inCycle, u)
			}
			delete(m.cycles, k)
		}
	}
	index := map[string]int{}
	low := map[string]int{}
	onStack := set{}
	var stack []string
	next := 0
	var visit func(g *entry)
	visit = func(g *entry) {
		index[g.uuid], low[g.uuid] = next, next
		next++
		stack = append(stack, g.uuid)
		onStack[g.uuid] = struct{}{}
		for _, mem := range g.members {
			c := m.lookup(mem)
			if c == nil || !c.isGroupish {
				continue
			}
			if _, aff := affected[c.uuid]; !aff {
				continue
			}
			if _, seen := index[c.uuid]; !seen {
				visit(c)
				low[g.uuid] = min(low[g.uuid], low[c.uuid])
			} else if _, on := onStack[c.uuid]; on {
				low[g.uuid] = min(low[g.uuid], index[c.uuid])
			}
		}
		if low[g.uuid] != index[g.uuid] {
			return
		}
		// g is the root of a strongly connected component: pop it.
		var scc []string
		for {
			u := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			delete(onStack, u)
			scc = append(scc, u)
			if u == g.uuid {
				break
			}
		}
		m.expandSCC(scc, affected)
	}
	ids := make([]string, 0, len(affected))
	for uuid := range affected {
		if e := m.byUUID[uuid]; e != nil && e.isGroupish {
			ids = append(ids, uuid)
		}
	}
	sort.Strings(ids) // a stable walk gives stable reports
	for _, uuid := range ids {
		if _, seen := index[uuid]; !seen {
			visit(m.byUUID[uuid])
		}
	}
}

// expandSCC gives every group of one strongly connected component the same
// expansion: the union of its members' addresses and of the expansions of
// the groups it reaches, all of which are final by now.
func (m *model) expandSCC(scc []string, affected set) {
	inSCC := set{}
	for _, u := range scc {
		inSCC[u] = struct{}{}
	}
	var out []string
	var lists [][]string // expansions of groups below, each sorted
	selfLoop := false
	for _, u := range scc {
		g := m.byUUID[u]
		var missing []string
		for i, mem := range g.members {
			c := m.lookup(mem)
			switch {
			case c == nil:
				missing = append(missing, g.memberDNs[i])
			case c.isGroupish:
				if _, same := inSCC[c.uuid]; same {
					if c.uuid == u {
						selfLoop = true
					}
					continue
				}
				lists = append(lists, m.exp[c.uuid])
			default:
				if a := c.attrs.FirstLower(event.AttrPrimaryAddress); a != "" && validAddress(a) {
					out = append(out, a)
				}
			}
		}
		if len(missing) > 0 {
			m.missing[u] = missing
		}
	}
	sort.Strings(out)
	out = dedupSorted(out)
	for _, l := range lists {
		out = mergeSorted(out, l)
	}
	for _, u := range scc {
		m.exp[u] = out
	}
	if len(scc) > 1 || selfLoop {
		ids := append([]string(nil), scc...)
		sort.Strings(ids)
		k := strings.Join(ids, " ")
		m.cycles[k] = ids
		for _, u := range ids {
			m.inCycle[u] = k
		}
	}
}

// contribute computes what one entry puts into the maps, following the
// union of UCS's ldap: tables (reference §3.3) with unionmap on and
// mailForwardCopyToSelf honoured.
func (m *model) contribute(e *entry) contribution {
	var c contribution
	if e == nil {
		return c
	}
	a := e.attrs
	addr := func(v string) string {
		v = strings.ToLower(strings.TrimSpace(v))
		if v == "" {
			return ""
		}
		if !validAddress(v) {
			c.invalid = append(c.invalid, v)
			return ""
		}
		return v
	}
	addrs := func(vs []string) []string {
		var out []string
		for _, v := range vs {
			if v = addr(v); v != "" {
				out = append(out, v)
			}
		}
		return out
	}
	put := func(key string, vals ...string) {
		if key == "" || len(vals) == 0 {
			return
		}
		if c.alias == nil {
			c.alias = map[string][]string{}
		}
		c.alias[key] = sortedUnion(c.alias[key], vals)
	}
	primary := addr(a.First(event.AttrPrimaryAddress))
	switch e.kind {
	case event.KindUser:
		alts := addrs(a[event.AttrAlternativeAddress])
		fwd := addrs(a[event.AttrForwardAddress])
		if a.First(event.AttrCanonicalRewrite) == "1" {
			// Served by UCS's ldap.virtualwithcanonical, which needs
			// univentionInternalPrimaryMailAddress; not followed, so the
			// user is left out as UCS's other tables leave it out.
			return c
		}
		if primary != "" {
			c.mailbox = []string{primary}
			switch {
			case len(fwd) == 0:
				put(primary, primary) // ldap.virtual_mailbox in the union
			case a.First(event.AttrForwardCopyToSelf) == "1":
				put(primary, append(fwd, primary)...)
			default:
				put(primary, fwd...)
			}
		}
		for _, alt := range alts {
			if primary != "" {
				put(alt, primary)
			} else {
				put(alt, fwd...)
			}
		}
	case event.KindGroup:
		vals := m.exp[e.uuid]
		if len(vals) == 0 {
			addrs(a[event.AttrAlternativeAddress])
			return c
		}
		keys := addrs(a[event.AttrAlternativeAddress])
		if primary != "" {
			keys = append(keys, primary)
		}
		for _, k := range keys {
			if c.alias == nil {
				c.alias = map[string][]string{}
			}
			if prev := c.alias[k]; prev != nil {
				c.alias[k] = sortedUnion(prev, vals)
			} else {
				c.alias[k] = vals
			}
		}
	case event.KindList:
		put(primary, addrs(a[event.AttrMailMember])...)
	case event.KindFolder:
		if primary == "" {
			return c
		}
		home := a.FirstLower(event.AttrHomeServer)
		if m.hostFQDN == "" || home == m.hostFQDN {
			c.mailbox = []string{primary}
		}
		put(primary, primary)
		for _, alt := range addrs(a[event.AttrAlternativeAddress]) {
			put(alt, primary)
		}
	case event.KindDomain:
		for _, d := range a[event.AttrCN] {
			d = strings.ToLower(strings.TrimSpace(d))
			if d == "" {
				continue
			}
			if !validDomain(d) {
				c.invalid = append(c.invalid, d)
				continue
			}
			c.domains = append(c.domains, d)
		}
	}
	return c
}

// setContribution replaces an entry's contribution and keeps the owner
// indexes in step.
func (m *model) setContribution(uuid string, c contribution) {
	old := m.contrib[uuid]
	for k := range old.alias {
		dropOwner(m.aliasOwners, k, uuid)
		if len(m.aliasOwners[k]) < 2 {
			delete(m.collisions, k)
		}
	}
	delete(m.invalid, uuid)
	delete(m.overLimit, uuid)
	if len(c.invalid) > 0 {
		m.invalid[uuid] = struct{}{}
	}
	if exp := m.exp[uuid]; m.limit > 0 && len(exp) > m.limit && len(c.alias) > 0 {
		m.overLimit[uuid] = struct{}{}
	}
	for _, k := range old.mailbox {
		dropOwner(m.mailboxOwners, k, uuid)
	}
	for _, k := range old.domains {
		dropOwner(m.domainOwners, k, uuid)
	}
	if !m.bulk {
		m.markDirty(old)
		m.markDirty(c)
	}
	if c.alias == nil && c.mailbox == nil && c.domains == nil && c.invalid == nil {
		delete(m.contrib, uuid)
		return
	}
	m.contrib[uuid] = c
	for k := range c.alias {
		addOwner(m.aliasOwners, k, uuid)
		if len(m.aliasOwners[k]) > 1 {
			m.collisions[k] = struct{}{}
		}
	}
	for _, k := range c.mailbox {
		addOwner(m.mailboxOwners, k, uuid)
	}
	for _, k := range c.domains {
		addOwner(m.domainOwners, k, uuid)
	}
}

// Owner lists are short (one entry, two for a collision), so slices.
func addOwner(idx map[string][]string, k, uuid string) {
	s := idx[k]
	for _, u := range s {
		if u == uuid {
			return
		}
	}
	idx[k] = append(s, uuid)
}

func dropOwner(idx map[string][]string, k, uuid string) {
	s := idx[k]
	for i, u := range s {
		if u == uuid {
			if len(s) == 1 {
				delete(idx, k)
			} else {
				idx[k] = append(s[:i:i], s[i+1:]...)
			}
			return
		}
	}
}

func sortedUnion(a, b []string) []string {
	if len(a) == 0 {
		out := append([]string(nil), b...)
		sort.Strings(out)
		return dedupSorted(out)
	}
	out := append(append([]string(nil), a...), b...)
	sort.Strings(out)
	return dedupSorted(out)
}

func dedupSorted(s []string) []string {
	if len(s) < 2 {
		return s
	}
	w := 1
	for i := 1; i < len(s); i++ {
		if s[i] != s[w-1] {
			s[w] = s[i]
			w++
		}
	}
	return s[:w]
}

// validAddress accepts what can be written into a Postfix table source
// line unharmed: local@domain with no whitespace, comma, quote or control
// character, not starting with '#'.
func validAddress(a string) bool {
	at := strings.IndexByte(a, '@')
	if at <= 0 || at == len(a)-1 || strings.IndexByte(a[at+1:], '@') >= 0 || a[0] == '#' {
		return false
	}
	for i := 0; i < len(a); i++ {
		switch ch := a[i]; {
		case ch <= ' ', ch == 0x7f, ch == ',', ch == '"':
			return false
		}
	}
	return !strings.HasSuffix(a, ":")
}

func validDomain(d string) bool {
	if d == "" || d[0] == '#' {
		return false
	}
	for i := 0; i < len(d); i++ {
		switch ch := d[i]; {
		case ch <= ' ', ch == 0x7f, ch == ',', ch == '"', ch == '@':
			return false
		}
	}
	return true
}

// render writes the three table sources, keys sorted, one line each.
func (m *model) render() (alias, mailbox, domains []byte) {
	m.settle()
	return m.aliasT.source(), m.mailboxT.source(), m.domainT.source()
}

func (m *model) aliasValues(key string) []string {
	owners := m.aliasOwners[key]
	if len(owners) == 1 {
		return m.contrib[owners[0]].alias[key]
	}
	var vals []string
	for _, u := range owners {
		vals = append(vals, m.contrib[u].alias[key]...)
	}
	sort.Strings(vals)
	return dedupSorted(vals)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// reports lists the problems the current state has, sorted.
func (m *model) reports() []Report {
	var out []Report
	dn := func(uuid string) string {
		if e := m.byUUID[uuid]; e != nil {
			return e.dn
		}
		return uuid
	}
	for _, ids := range m.cycles {
		dns := make([]string, len(ids))
		for i, u := range ids {
			dns[i] = dn(u)
		}
		sort.Strings(dns)
		msg := "groups form a membership cycle: " + strings.Join(dns, ", ") + "; each expanded to the union of their members"
		if len(dns) == 1 {
			msg = "group " + dns[0] + " is a member of itself; expanded to its other members"
		}
		out = append(out, Report{Kind: ReportCycle, DNs: dns, Message: msg})
	}
	for u, miss := range m.missing {
		for _, mdn := range miss {
			out = append(out, Report{Kind: ReportMissingMember, DNs: []string{dn(u), mdn},
				Message: fmt.Sprintf("group %s: member %s is not in the directory index (missing, or no mail object); skipped", dn(u), mdn)})
		}
	}
	for u := range m.overLimit {
		n := len(m.exp[u])
		out = append(out, Report{Kind: ReportExpansionLimit, DNs: []string{dn(u)}, Size: n,
			Message: fmt.Sprintf("group %s expands to %d recipients, over virtual_alias_expansion_limit %d: written in full; Postfix defers its mail unless /etc/postfix/main.cf.local has the line %q",
				dn(u), n, m.limit, MainCFLine(n))})
	}
	for k := range m.collisions {
		owners := m.aliasOwners[k]
		dns := make([]string, 0, len(owners))
		for _, u := range owners {
			dns = append(dns, dn(u))
		}
		sort.Strings(dns)
		out = append(out, Report{Kind: ReportCollision, Address: k, DNs: dns,
			Message: fmt.Sprintf("address %s is defined by %s; all of them receive (as UCS with unionmap)", k, strings.Join(dns, ", "))})
	}
	for u := range m.invalid {
		for _, a := range m.contrib[u].invalid {
			out = append(out, Report{Kind: ReportInvalidAddress, Address: a, DNs: []string{dn(u)},
				Message: fmt.Sprintf("entry %s: invalid address %q left out of the maps", dn(u), a)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key() < out[j].key() })
	return out
}

// maxOverLimit is the largest expansion over the limit, or 0.
func (m *model) maxOverLimit() int {
	n := 0
	for u := range m.overLimit {
		n = max(n, len(m.exp[u]))
	}
	return n
}

// buildModel builds the model of a whole directory at once: no ancestor
// walks per entry, every contribution computed once, the tables rendered
// from the owner indexes with one sort per table.
func buildModel(hostFQDN string, limit int, entries []event.Entry) *model {
	m := newModel(hostFQDN, limit)
	// Sized for the directory up front: growing maps of 100k keys is a
	// good part of a full build otherwise.
	n := len(entries)
	m.byUUID = make(map[string]*entry, n)
	m.byDN = make(map[string][]string, n)
	m.contrib = make(map[string]contribution, n)
	m.aliasOwners = make(map[string][]string, n)
	m.mailboxOwners = make(map[string][]string, n)
	all := make(set, len(entries))
	for _, e := range entries {
		if e.UUID == "" {
			continue
		}
		m.insert(newEntry(e.UUID, e.DN, e.Kind, e.Attrs))
		all[e.UUID] = struct{}{}
	}
	m.bulk = true
	m.recompute(all)
	m.bulk = false
	m.aliasT.fill(m.aliasOwners, m.aliasLine)
	m.mailboxT.fill(m.mailboxOwners, identityLine)
	m.domainT.fill(m.domainOwners, identityLine)
	return m
}

func identityLine(k string) string { return k + " " + k }

// markDirty notes the keys a contribution touches for the next settle.
func (m *model) markDirty(c contribution) {
	for k := range c.alias {
		m.dirtyAlias[k] = struct{}{}
	}
	for _, k := range c.mailbox {
		m.dirtyMailbox[k] = struct{}{}
		m.dirtyAlias[k] = struct{}{} // a mailbox hides its identity alias
	}
	for _, k := range c.domains {
		m.dirtyDomain[k] = struct{}{}
	}
}

// mergeSorted is the sorted union of two sorted, duplicate-free lists; it
// never modifies either (expansions are shared between groups).
func mergeSorted(a, b []string) []string {
	if len(b) == 0 {
		return a
	}
	if len(a) == 0 {
		return b
	}
	out := make([]string, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			out = append(out, a[i])
			i++
		case a[i] > b[j]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}
