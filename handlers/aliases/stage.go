package aliases

// Staging: a change is put into the directory index at once, in the order
// the events come, but the expansions, contributions and lines it affects
// are recomputed once per write, for every change the write carries. In a
// burst of changes to groups that share ancestors, each ancestor is then
// expanded once per write, not once per change.

// stage inserts or replaces e in the index and notes it for refresh.
func (m *model) stage(e *entry) {
	m.complete()
	old := m.insert(e)
	m.note(e.uuid, e.ndn)
	if old != nil && old.ndn != e.ndn {
		m.note("", old.ndn)
	}
}

// stageDel removes the entry with uuid from the index and notes it.
func (m *model) stageDel(uuid string) {
	m.complete()
	old := m.byUUID[uuid]
	if old == nil {
		return
	}
	m.remove(old)
	delete(m.byUUID, uuid)
	m.note(uuid, old.ndn)
}

func (m *model) note(uuid, ndn string) {
	if m.staleIDs == nil {
		m.staleIDs, m.staleDNs = set{}, set{}
	}
	if uuid != "" {
		m.staleIDs[uuid] = struct{}{}
	}
	m.staleDNs[ndn] = struct{}{}
}

// refresh recomputes what the staged changes affect: the staged entries,
// and every group that reaches one of their DNs, old or new, through the
// membership index as it is now (so the set is closed under ancestors in
// the current state, whatever order the changes came in).
func (m *model) refresh() {
	m.complete()
	if len(m.staleIDs) == 0 && len(m.staleDNs) == 0 {
		return
	}
	affected := m.staleIDs
	dns := make([]string, 0, len(m.staleDNs))
	for dn := range m.staleDNs {
		dns = append(dns, dn)
	}
	m.staleIDs, m.staleDNs = nil, nil
	m.climb(affected, dns)
	m.recompute(affected)
}
