package aliases

// Incremental group expansion: the groups a change reaches and their
// expansions recomputed, cycles found with Tarjan's algorithm.

import (
	"sort"
	"strings"
)

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
	m.eachResolved(g, nil, group, addr)
}

// eachResolved is eachMember with g's members resolved already, when
// resolved is not nil: resolved[i] is the entry of g.members[i] or nil.
func (m *model) eachResolved(g *entry, resolved []*entry, group, addr func(c *entry)) {
	var missing []string
	for i, mem := range g.members {
		var c *entry
		if resolved != nil {
			c = resolved[i]
		} else {
			c = m.lookup(mem)
		}
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
