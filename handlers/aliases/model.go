package aliases

import (
	"cmp"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"mailsync/address"
	"mailsync/event"
	"mailsync/identity"
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
	// memberAddr is what a group listing this (non-group) entry expands
	// it to: its primary address, lowercased, or "" when none or invalid.
	memberAddr string
}

// contribution is what one entry puts into the three maps. The owner
// indexes point at it, so rendering a key needs no lookup by UUID.
type contribution struct {
	uuid    string
	alias   []aliasKey // few keys, each once
	mailbox []string
	domains []string
	invalid []error // values the address rule refused (*address.Error), skipped
}

// aliasKey is one alias key of a contribution and its sorted values.
type aliasKey struct {
	key  string
	vals []string
}

// aliasOf returns the contribution's values for key, or nil.
func (c *contribution) aliasOf(key string) []string {
	for i := range c.alias {
		if c.alias[i].key == key {
			return c.alias[i].vals
		}
	}
	return nil
}

func (c *contribution) empty() bool {
	return c.alias == nil && c.mailbox == nil && c.domains == nil && c.invalid == nil
}

// set is a string set.
type set map[string]struct{}

// model is the directory index and the maps derived from it. It is not
// safe for concurrent use; the Handler serialises access.
type model struct {
	hostFQDN string
	limit    int

	byUUID  map[string]*entry
	byDN    map[string][]*entry // normalised DN -> entries carrying it, by UUID
	parents map[string][]string // normalised member DN -> UUIDs of the groups listing it, each once

	exp     map[string][]string // group UUID -> expansion (member addresses, sorted)
	missing map[string][]string // group UUID -> member DNs not in the index
	cycles  map[string][]string // sorted UUIDs joined by " " -> UUIDs of one cycle
	inCycle map[string]string   // group UUID -> key into cycles
	contrib map[string]*contribution

	aliasOwners   owners // alias key -> contributions defining it
	collisions    set    // alias keys with more than one owner
	invalid       set    // UUIDs whose contribution skipped an address
	overLimit     set    // group UUIDs with an address expanding past the limit
	mailboxOwners owners // mailbox key -> contributions defining it
	domainOwners  owners

	// The rendered tables, and the keys whose lines need re-rendering.
	aliasT, mailboxT, domainT             *rendered
	dirtyAlias, dirtyMailbox, dirtyDomain set
	bulk                                  bool // buildModel renders everything at the end

	// Changes staged since the last refresh (see stage.go).
	staleIDs set
	staleDNs set

	// While bulk, new one-element index lists come from these.
	entrySlab   slab[*entry]
	uuidSlab    slab[string]
	contribSlab slab[*contribution]
	// For the mailbox index, built alongside the alias index.
	contribSlab2 slab[*contribution]
}

// slab hands out one-element slices cut from shared chunks: the index
// lists of a full build, which are nearly all one element long, then cost
// an allocation per thousand. Only for the full build: later changes
// allocate their own, so a chunk is held at most until the lists of the
// build are all replaced.
type slab[T any] []T

// one returns []T{v}, from the slab when it is not nil.
func (s *slab[T]) one(v T) []T {
	if s == nil {
		return []T{v}
	}
	if len(*s) == cap(*s) {
		*s = make([]T, 0, 1024)
	}
	*s = append(*s, v)
	n := len(*s)
	return (*s)[n-1 : n : n]
}

// slabs returns the slabs to use now: none unless in a full build.
func (m *model) slabs() (*slab[*entry], *slab[string], *slab[*contribution], *slab[*contribution]) {
	if !m.bulk {
		return nil, nil, nil, nil
	}
	return &m.entrySlab, &m.uuidSlab, &m.contribSlab, &m.contribSlab2
}

func newModel(hostFQDN string, limit int) *model {
	return &model{
		hostFQDN:      address.CanonicalHost(hostFQDN),
		limit:         limit,
		byUUID:        map[string]*entry{},
		byDN:          map[string][]*entry{},
		parents:       map[string][]string{},
		exp:           map[string][]string{},
		missing:       map[string][]string{},
		cycles:        map[string][]string{},
		inCycle:       map[string]string{},
		contrib:       map[string]*contribution{},
		aliasOwners:   owners{},
		collisions:    set{},
		invalid:       set{},
		overLimit:     set{},
		mailboxOwners: owners{},
		domainOwners:  owners{},
		aliasT:        newRendered(),
		mailboxT:      newRendered(),
		domainT:       newRendered(),
		dirtyAlias:    set{},
		dirtyMailbox:  set{},
		dirtyDomain:   set{},
	}
}

func newEntry(uuid, dn string, kind event.Kind, attrs event.Attrs) *entry {
	e := &entry{}
	e.init(uuid, dn, kind, attrs)
	return e
}

// init is newEntry into a zero entry.
func (e *entry) init(uuid, dn string, kind event.Kind, attrs event.Attrs) {
	if kind == "" {
		kind, _ = event.KindOf(attrs)
	}
	*e = entry{uuid: uuid, dn: dn, ndn: identity.NormDN(dn), kind: kind, attrs: attrs}
	if kind != event.KindGroup {
		if v := attrs.First(event.AttrPrimaryAddress); v != "" && validHome(kind, attrs) {
			if a, err := address.Check(event.AttrPrimaryAddress, v); err == nil {
				e.memberAddr = a
			}
		}
	} else {
		e.isGroupish = true
		for _, m := range attrs[event.AttrUniqueMember] {
			e.members = append(e.members, identity.NormDN(m))
			e.memberDNs = append(e.memberDNs, m)
		}
	}
}

// validHome reports whether a user's or shared folder's home server, if
// any, is one the address rule accepts; other kinds have no mailbox.
func validHome(kind event.Kind, a event.Attrs) bool {
	home := a.First(event.AttrHomeServer)
	if home == "" || (kind != event.KindUser && kind != event.KindFolder) {
		return true
	}
	_, err := address.Host(event.AttrHomeServer, home)
	return err == nil
}

// insert inserts or replaces an entry in the index and returns the entry
// it replaced.
func (m *model) insert(e *entry) *entry {
	old := m.byUUID[e.uuid]
	m.remove(old)
	m.byUUID[e.uuid] = e
	m.indexEntry(e)
	return old
}

// indexEntry adds e to the DN index (entries sharing a DN kept in UUID
// order) and to the reverse membership index of each group it lists.
func (m *model) indexEntry(e *entry) {
	m.indexDN(e)
	m.indexMembers(e)
}

// indexDN adds e to the DN index.
func (m *model) indexDN(e *entry) {
	entrySlab, _, _, _ := m.slabs()
	if same := m.byDN[e.ndn]; len(same) == 0 {
		m.byDN[e.ndn] = entrySlab.one(e)
	} else {
		same = append(same, e)
		slices.SortFunc(same, func(a, b *entry) int { return strings.Compare(a.uuid, b.uuid) })
		m.byDN[e.ndn] = same
	}
}

// indexMembers adds e to the reverse membership index of each group it
// lists.
func (m *model) indexMembers(e *entry) {
	_, uuidSlab, _, _ := m.slabs()
	for _, mem := range e.members {
		switch ps := m.parents[mem]; {
		case len(ps) == 0:
			m.parents[mem] = uuidSlab.one(e.uuid)
		case !slices.Contains(ps, e.uuid):
			m.parents[mem] = append(ps, e.uuid)
		}
	}
}

// lookup resolves a normalised DN to its entry, or nil.
func (m *model) lookup(ndn string) *entry {
	if es := m.byDN[ndn]; len(es) > 0 {
		return es[0]
	}
	return nil
}

func (m *model) remove(old *entry) {
	if old == nil {
		return
	}
	m.unindexDN(old)
	for _, mem := range old.members {
		ps := m.parents[mem]
		if i := slices.Index(ps, old.uuid); i >= 0 {
			if len(ps) == 1 {
				delete(m.parents, mem)
			} else {
				m.parents[mem] = append(ps[:i:i], ps[i+1:]...)
			}
		}
	}
}

// unindexDN removes old from the DN index.
func (m *model) unindexDN(old *entry) {
	// Two entries may carry the same DN for a while (a delete and an add
	// travelling on different subjects); the smallest UUID wins lookups.
	es := m.byDN[old.ndn]
	for i, e := range es {
		if e == old {
			es = append(es[:i:i], es[i+1:]...)
			break
		}
	}
	if len(es) == 0 {
		delete(m.byDN, old.ndn)
	} else {
		m.byDN[old.ndn] = es
	}
}

// climb adds to out every group reaching one of the DNs, skipping the walk
// above groups already in out (whose own DNs the caller passes).
func (m *model) climb(out set, dns []string) {
	queue := append([]string(nil), dns...)
	for len(queue) > 0 {
		dn := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		for _, g := range m.parents[dn] {
			if _, seen := out[g]; seen {
				continue
			}
			out[g] = struct{}{}
			if ge := m.byUUID[g]; ge != nil {
				queue = append(queue, ge.ndn)
			}
		}
	}
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
// ancestors, no cycle crosses its border. The full build has expandAll.
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
			if _, ok := affected[c.uuid]; !ok {
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
		m.expandSCC(scc)
	}
	var ids []string
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
func (m *model) expandSCC(scc []string) {
	inSCC := set{}
	for _, u := range scc {
		inSCC[u] = struct{}{}
	}
	var out []string
	var lists [][]string // expansions of groups below, each sorted
	selfLoop := false
	for _, u := range scc {
		m.eachMember(m.byUUID[u], func(c *entry) {
			if _, same := inSCC[c.uuid]; same {
				selfLoop = selfLoop || c.uuid == u
				return
			}
			lists = append(lists, m.exp[c.uuid])
		}, func(c *entry) { out = append(out, c.memberAddr) })
	}
	sort.Strings(out)
	out = mergeAll(dedupSorted(out), lists)
	for _, u := range scc {
		m.exp[u] = out
	}
	if len(scc) > 1 || selfLoop {
		m.recordCycle(append([]string(nil), scc...))
	}
}

// eachMember resolves the members of group g: it calls group with each
// member that is a group, addr with each other member that has an address,
// and records the member DNs not in the index (reported as missing).
func (m *model) eachMember(g *entry, group, addr func(c *entry)) {
	var missing []string
	for i, mem := range g.members {
		c := m.lookup(mem)
		switch {
		case c == nil:
			missing = append(missing, g.memberDNs[i])
		case c.isGroupish:
			group(c)
		case c.memberAddr != "":
			addr(c)
		}
	}
	if len(missing) > 0 {
		m.missing[g.uuid] = missing
	}
}

// recordCycle notes the groups with UUIDs ids (which it sorts) as one
// membership cycle, to be reported once.
func (m *model) recordCycle(ids []string) {
	sort.Strings(ids)
	k := strings.Join(ids, " ")
	m.cycles[k] = ids
	for _, u := range ids {
		m.inCycle[u] = k
	}
}

// contribute computes what one entry puts into the maps, following the
// union of UCS's ldap: tables (reference §3.3) with unionmap on and
// mailForwardCopyToSelf honoured.
func (m *model) contribute(e *entry) *contribution {
	return m.contributeInto(&contribution{}, e)
}

// contributeInto is contribute writing into c, which must be zero.
func (m *model) contributeInto(c *contribution, e *entry) *contribution {
	if e == nil {
		return c
	}
	c.uuid = e.uuid
	a := e.attrs
	// The address rule (package address) decides what enters a map: no
	// map holds an address the mailbox handler refuses, and nothing is
	// trimmed.
	addr := func(attr, v string) string {
		if v == "" {
			return ""
		}
		a, err := address.Check(attr, v)
		if err != nil {
			c.invalid = append(c.invalid, err)
			return ""
		}
		return a
	}
	addrs := func(attr string) []string {
		var out []string
		for _, v := range a[attr] {
			if v = addr(attr, v); v != "" {
				out = append(out, v)
			}
		}
		return out
	}
	put := func(key string, vals ...string) {
		if key == "" || len(vals) == 0 {
			return
		}
		for i := range c.alias {
			if c.alias[i].key == key {
				c.alias[i].vals = sortedUnion(c.alias[i].vals, vals)
				return
			}
		}
		c.alias = append(c.alias, aliasKey{key, sortedUnion(nil, vals)})
	}
	primary := addr(event.AttrPrimaryAddress, a.First(event.AttrPrimaryAddress))
	home := a.First(event.AttrHomeServer)
	if !validHome(e.kind, a) {
		// A mailbox whose home server the rule refuses exists nowhere
		// (the mailbox and homeserver handlers refuse it too): no map
		// accepts mail for it.
		_, err := address.Host(event.AttrHomeServer, home)
		c.invalid = append(c.invalid, err)
		return c
	}
	switch e.kind {
	case event.KindUser:
		alts := addrs(event.AttrAlternativeAddress)
		fwd := addrs(event.AttrForwardAddress)
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
			addrs(event.AttrAlternativeAddress) // for the reports
			return c
		}
		keys := addrs(event.AttrAlternativeAddress)
		if primary != "" {
			keys = append(keys, primary)
		}
	keyLoop:
		for _, k := range keys {
			for i := range c.alias {
				if c.alias[i].key == k {
					continue keyLoop // the same expansion again
				}
			}
			c.alias = append(c.alias, aliasKey{k, vals})
		}
	case event.KindList:
		put(primary, addrs(event.AttrMailMember)...)
	case event.KindFolder:
		if primary == "" {
			return c
		}
		if m.hostFQDN == "" || address.SameHost(home, m.hostFQDN) {
			c.mailbox = []string{primary}
		}
		put(primary, primary)
		for _, alt := range addrs(event.AttrAlternativeAddress) {
			put(alt, primary)
		}
	case event.KindDomain:
		for _, v := range a[event.AttrCN] {
			d, err := address.Domain(event.AttrCN, v)
			if err != nil {
				c.invalid = append(c.invalid, err)
				continue
			}
			c.domains = append(c.domains, d)
		}
	}
	return c
}

// setContribution replaces an entry's contribution and keeps the owner
// indexes in step.
func (m *model) setContribution(uuid string, c *contribution) {
	old := m.contrib[uuid]
	if old != nil {
		for _, a := range old.alias {
			m.aliasOwners.drop(a.key, uuid)
			if len(m.aliasOwners[a.key]) < 2 {
				delete(m.collisions, a.key)
			}
		}
		for _, k := range old.mailbox {
			m.mailboxOwners.drop(k, uuid)
		}
		for _, k := range old.domains {
			m.domainOwners.drop(k, uuid)
		}
		delete(m.invalid, uuid)
		delete(m.overLimit, uuid)
	}
	if len(c.invalid) > 0 {
		m.invalid[uuid] = struct{}{}
	}
	if exp := m.exp[uuid]; m.limit > 0 && len(exp) > m.limit && len(c.alias) > 0 {
		m.overLimit[uuid] = struct{}{}
	}
	if !m.bulk {
		m.markDirty(old)
		m.markDirty(c)
	}
	if c.empty() {
		if old != nil {
			delete(m.contrib, uuid)
		}
		return
	}
	m.contrib[uuid] = c
	_, _, sl, _ := m.slabs()
	for _, a := range c.alias {
		if m.aliasOwners.add(a.key, c, sl) > 1 {
			m.collisions[a.key] = struct{}{}
		}
	}
	for _, k := range c.mailbox {
		m.mailboxOwners.add(k, c, sl)
	}
	for _, k := range c.domains {
		m.domainOwners.add(k, c, sl)
	}
}

// owners indexes the contributions defining each key. Owner lists are
// short (one entry, two for a collision), so slices.
type owners map[string][]*contribution

// add makes c (replacing one of the same UUID) an owner of k and returns
// the number of owners.
func (o owners) add(k string, c *contribution, sl *slab[*contribution]) int {
	s := o[k]
	if len(s) == 0 {
		o[k] = sl.one(c)
		return 1
	}
	for i, u := range s {
		if u.uuid == c.uuid {
			s[i] = c
			return len(s)
		}
	}
	o[k] = append(s, c)
	return len(s) + 1
}

func (o owners) drop(k, uuid string) {
	s := o[k]
	for i, u := range s {
		if u.uuid == uuid {
			if len(s) == 1 {
				delete(o, k)
			} else {
				o[k] = append(s[:i:i], s[i+1:]...)
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

// render writes the three table sources, keys sorted, one line each.
func (m *model) render() (alias, mailbox, domains []byte) {
	m.settle()
	return m.aliasT.source(), m.mailboxT.source(), m.domainT.source()
}

func (m *model) aliasValues(key string) []string {
	owners := m.aliasOwners[key]
	if len(owners) == 1 {
		return owners[0].aliasOf(key)
	}
	var vals []string
	for _, c := range owners {
		vals = append(vals, c.aliasOf(key)...)
	}
	sort.Strings(vals)
	return dedupSorted(vals)
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
		for _, c := range owners {
			dns = append(dns, dn(c.uuid))
		}
		sort.Strings(dns)
		out = append(out, Report{Kind: ReportCollision, Address: k, DNs: dns,
			Message: fmt.Sprintf("address %s is defined by %s; all of them receive (as UCS with unionmap)", k, strings.Join(dns, ", "))})
	}
	for u := range m.invalid {
		for _, err := range m.contrib[u].invalid {
			r := Report{Kind: ReportInvalidAddress, DNs: []string{dn(u)},
				Message: fmt.Sprintf("entry %s: %v; left out of the maps", dn(u), err)}
			if ae, ok := err.(*address.Error); ok {
				r.Attr, r.Address = ae.Attr, ae.Value
			}
			out = append(out, r)
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
// walks per entry, every contribution computed once, each table rendered
// straight into its source in one pass over its sorted keys. Parsing and
// contributing are spread over the CPUs, and each index map is written by
// one goroutine, the maps side by side.
func buildModel(hostFQDN string, limit int, entries []event.Entry) *model {
	m, indexLater := buildModelEarly(hostFQDN, limit, entries, nil)
	indexLater()
	return m
}

// buildModelEarly is buildModel in stages, for Load to run postmap
// alongside the rest of the build. It calls early, when not nil, with the
// mailbox and domain table sources as soon as they are final, before the
// group expansions, and returns once the alias table is rendered, with
// indexLater, which completes what only later changes and the reports use;
// the model is not to be used otherwise until indexLater has returned.
func buildModelEarly(hostFQDN string, limit int, entries []event.Entry, early func(mailbox, domains []byte)) (m *model, indexLater func()) {
	m = newModel(hostFQDN, limit)
	// Sized for the directory up front: growing maps of 100k keys is a
	// good part of a full build otherwise.
	n := len(entries)
	m.byUUID = make(map[string]*entry, n)
	m.byDN = make(map[string][]*entry, n)
	m.parents = make(map[string][]string, n)
	m.contrib = make(map[string]*contribution, n)
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

	var wg sync.WaitGroup
	var aliasKeys []string // sorted, so far those of the entries other than groups
	wg.Go(func() {
		m.setContributions(es, cs, current, false)
		aliasKeys = sortedOwnerKeys(m.aliasOwners)
	})
	var mailboxes, domains []string
	for i := range cs {
		if current[i] {
			mailboxes = append(mailboxes, cs[i].mailbox...)
			domains = append(domains, cs[i].domains...)
		}
	}
	m.mailboxT.fillIdentity(sortedUnique(mailboxes))
	m.domainT.fillIdentity(sortedUnique(domains))
	if early != nil {
		early(m.mailboxT.source(), m.domainT.source())
	}
	m.expandAll(es, current)
	wg.Wait()
	for i := range es {
		if current[i] && es[i].isGroupish {
			m.contributeInto(&cs[i], &es[i])
		}
	}
	m.setContributions(es, cs, current, true)
	var groupKeys []string
	for i := range es {
		if current[i] && es[i].isGroupish {
			for _, a := range cs[i].alias {
				groupKeys = append(groupKeys, a.key)
			}
		}
	}
	aliasKeys = mergeInto(make([]string, 0, len(aliasKeys)+len(groupKeys)), aliasKeys, sortedUnique(groupKeys))
	m.aliasT.fill(aliasKeys, func(i int) []string { return m.aliasLineValues(aliasKeys[i]) })
	return m, func() { m.indexLater(es, cs, current) }
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

// indexLater completes the model of a full build with what only later
// changes and the reports use: the reverse membership index and the
// contributions by UUID, with the sets of entries reporting invalid
// addresses and expansions over the limit.
func (m *model) indexLater(es []entry, cs []contribution, current []bool) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range es {
			if current[i] {
				m.indexMembers(&es[i])
			}
		}
	})
	for i := range es {
		e, c := &es[i], &cs[i]
		if !current[i] || c.empty() {
			continue
		}
		m.contrib[e.uuid] = c
		if len(c.invalid) > 0 {
			m.invalid[e.uuid] = struct{}{}
		}
		if e.isGroupish && m.limit > 0 && len(m.exp[e.uuid]) > m.limit && len(c.alias) > 0 {
			m.overLimit[e.uuid] = struct{}{}
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

// markDirty notes the keys a contribution touches for the next settle.
func (m *model) markDirty(c *contribution) {
	if c == nil {
		return
	}
	for _, a := range c.alias {
		m.dirtyAlias[a.key] = struct{}{}
	}
	for _, k := range c.mailbox {
		m.dirtyMailbox[k] = struct{}{}
		m.dirtyAlias[k] = struct{}{} // a mailbox hides its identity alias
	}
	for _, k := range c.domains {
		m.dirtyDomain[k] = struct{}{}
	}
}

// mergeAll is the sorted union of out and lists, all sorted and
// duplicate-free, in one allocation; it never modifies lists, and shares a
// list when that is the union. Two-way merges, longest lists first, cost
// fewer comparisons than one k-way merge.
func mergeAll[T cmp.Ordered](out []T, lists [][]T) []T {
	heads := make([][]T, 0, len(lists)+1)
	n := 0
	for _, l := range append(lists, out) {
		if len(l) > 0 {
			heads = append(heads, l)
			n += len(l)
		}
	}
	switch len(heads) {
	case 0:
		return out
	case 1:
		return heads[0]
	}
	slices.SortFunc(heads, func(a, b []T) int { return len(b) - len(a) })
	dst := mergeInto(make([]T, 0, n), heads[0], heads[1])
	for _, h := range heads[2:] {
		dst = mergeBack(dst, h)
	}
	return dst
}

// mergeBack merges b into dst in place, from the back, dst having the
// room; both sorted and duplicate-free.
func mergeBack[T cmp.Ordered](dst, b []T) []T {
	i, j := len(dst)-1, len(b)-1
	w := len(dst) + len(b)
	dst = dst[:w]
	for j >= 0 {
		w--
		switch {
		case i >= 0 && dst[i] > b[j]:
			dst[w] = dst[i]
			i--
		case i >= 0 && dst[i] == b[j]:
			dst[w] = dst[i]
			i--
			j--
		default:
			dst[w] = b[j]
			j--
		}
	}
	// dst[:i+1] is in place; a duplicate left a gap of w-(i+1) before dst[w:].
	if gap := w - (i + 1); gap > 0 {
		copy(dst[i+1:], dst[w:])
		dst = dst[:len(dst)-gap]
	}
	return dst
}

// mergeInto appends the sorted union of a and b to dst, which must not
// overlap them.
func mergeInto[T cmp.Ordered](dst, a, b []T) []T {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			dst = append(dst, a[i])
			i++
		case a[i] > b[j]:
			dst = append(dst, b[j])
			j++
		default:
			dst = append(dst, a[i])
			i++
			j++
		}
	}
	dst = append(dst, a[i:]...)
	return append(dst, b[j:]...)
}
