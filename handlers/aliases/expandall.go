package aliases

import (
	"slices"
	"strings"
)

// expandAll computes the expansion of every current group of a full build,
// with the results expand gives for every group, on dense integer ids:
// groups are numbered in the order of es and member addresses ranked in
// string order, so the walk needs no map and the merges compare integers
// where expand compares strings. Each expansion becomes strings once, when
// its component is done; done, when not nil, is then called with each
// group of the component.
func (m *model) expandAll(es []entry, current []bool, done func(g *entry)) {
	g := m.numberGroups(es, current)
	n := len(g.groups)
	index := make([]int32, n) // visit order from 1; 0: not visited yet
	low := make([]int32, n)
	comp := make([]int32, n) // component number from 1; 0: still on the stack
	exp := make([][]int32, n)
	strs := make([][]string, n)
	var stack []int32
	next, comps := int32(1), int32(0)
	var visit func(u int32)
	visit = func(u int32) {
		index[u], low[u] = next, next
		next++
		stack = append(stack, u)
		for _, c := range g.subs(u) {
			if index[c] == 0 {
				visit(c)
				low[u] = min(low[u], low[c])
			} else if comp[c] == 0 {
				low[u] = min(low[u], index[c])
			}
		}
		if low[u] != index[u] {
			return
		}
		// u is the root of a strongly connected component: the stack from
		// u up.
		i := len(stack) - 1
		for stack[i] != u {
			i--
		}
		scc := stack[i:]
		stack = stack[:i]
		comps++
		for _, v := range scc {
			comp[v] = comps
		}
		m.expandSCCAll(g, scc, comps, comp, exp, strs)
		if done != nil {
			for _, v := range scc {
				done(g.groups[v])
			}
		}
	}
	for u := range int32(n) {
		if index[u] == 0 {
			visit(u)
		}
	}
}

// expandSCCAll is expandSCC for expandAll: the component scc, numbered c,
// gets the union of its members' addresses and of the expansions below it,
// which are final by now.
func (m *model) expandSCCAll(g *groupGraph, scc []int32, c int32, comp []int32, exp [][]int32, strs [][]string) {
	var own []int32
	if len(scc) == 1 {
		// Sorted in place: the member list is read only here.
		own = g.own(scc[0])
	} else {
		for _, u := range scc {
			own = append(own, g.own(u)...)
		}
	}
	slices.Sort(own)
	own = slices.Compact(own)
	var lists [][]int32
	var below []int32 // the groups the lists come from
	selfLoop := false
	for _, u := range scc {
		for _, s := range g.subs(u) {
			if comp[s] == c {
				selfLoop = selfLoop || s == u
				continue
			}
			lists = append(lists, exp[s])
			below = append(below, s)
		}
	}
	out := mergeAll(own, lists)
	// A union as long as one of its parts is that part: share its strings.
	var vals []string
	for _, s := range below {
		if len(exp[s]) == len(out) {
			vals = strs[s]
			break
		}
	}
	if vals == nil && len(out) > 0 {
		vals = make([]string, len(out))
		for i, r := range out {
			vals[i] = g.addrs[r]
		}
	}
	for _, u := range scc {
		exp[u], strs[u] = out, vals
		m.exp[g.groups[u].uuid] = vals
	}
	if len(scc) > 1 || selfLoop {
		ids := make([]string, len(scc))
		for i, u := range scc {
			ids[i] = g.groups[u].uuid
		}
		m.recordCycle(ids)
	}
}

// groupGraph is the membership graph of a full build on dense ids, each
// group's members resolved once: member groups by number, other members by
// the rank of their address.
type groupGraph struct {
	groups []*entry
	addrs  []string // sorted; an address's rank is its index
	// The members of group u are ownIDs[ownAt[u]:ownAt[u+1]] and
	// subIDs[subAt[u]:subAt[u+1]], in one array each.
	ownIDs, subIDs []int32
	ownAt, subAt   []int32
}

func (g *groupGraph) own(u int32) []int32  { return g.ownIDs[g.ownAt[u]:g.ownAt[u+1]] }
func (g *groupGraph) subs(u int32) []int32 { return g.subIDs[g.subAt[u]:g.subAt[u+1]] }

// numberGroups builds the group graph of the current entries; eachMember
// records the member DNs not in the index, as for expandSCC.
func (m *model) numberGroups(es []entry, current []bool) *groupGraph {
	g := &groupGraph{}
	for i := range es {
		if current[i] && es[i].isGroupish {
			es[i].bulk = int32(len(g.groups))
			g.groups = append(g.groups, &es[i])
		}
	}
	g.ownAt = make([]int32, 1, len(g.groups)+1)
	g.subAt = make([]int32, 1, len(g.groups)+1)
	// Member addresses are numbered by entry first, in order of appearance,
	// and ranked below; no map of addresses is needed. Every member the
	// DN index resolves is one of es (the full build indexes nothing else),
	// so its number starts at 0.
	var addrs []string // by address id
	sub := func(c *entry) { g.subIDs = append(g.subIDs, c.bulk) }
	own := func(c *entry) {
		if c.bulk == 0 {
			addrs = append(addrs, c.memberAddr)
			c.bulk = int32(len(addrs))
		}
		g.ownIDs = append(g.ownIDs, c.bulk-1)
	}
	// The members' DNs are looked up first, spread over the CPUs: the
	// lookups are most of the cost, the numbering must be in order.
	from := make([]int, len(g.groups)+1) // group u's in resolved: from[u]:from[u+1]
	for u, e := range g.groups {
		from[u+1] = from[u] + len(e.members)
	}
	resolved := make([]*entry, from[len(g.groups)])
	inParallel(len(g.groups), func(lo, hi int) {
		for u := lo; u < hi; u++ {
			for i, mem := range g.groups[u].members {
				resolved[from[u]+i] = m.lookup(mem)
			}
		}
	})
	for u, e := range g.groups {
		m.eachResolved(e, resolved[from[u]:from[u+1]], sub, own)
		g.ownAt = append(g.ownAt, int32(len(g.ownIDs)))
		g.subAt = append(g.subAt, int32(len(g.subIDs)))
	}
	// Ranks in string order, so that sorted ids are sorted addresses; two
	// entries with the same address get the same rank.
	order := make([]int32, len(addrs))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return strings.Compare(addrs[a], addrs[b]) })
	rank := make([]int32, len(addrs))
	g.addrs = make([]string, 0, len(addrs))
	for _, id := range order {
		if n := len(g.addrs); n == 0 || g.addrs[n-1] != addrs[id] {
			g.addrs = append(g.addrs, addrs[id])
		}
		rank[id] = int32(len(g.addrs) - 1)
	}
	for i, id := range g.ownIDs {
		g.ownIDs[i] = rank[id]
	}
	// The addresses, copied in rank order into one string: the expansions,
	// most of the alias table, are then rendered from a megabyte or two
	// read in order, not from strings all over the heap.
	size := 0
	for _, a := range g.addrs {
		size += len(a)
	}
	var all strings.Builder
	all.Grow(size)
	for _, a := range g.addrs {
		all.WriteString(a)
	}
	arena, at := all.String(), 0
	for i, a := range g.addrs {
		g.addrs[i] = arena[at : at+len(a)]
		at += len(a)
	}
	return g
}
