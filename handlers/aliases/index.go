package aliases

// The directory index: entries by UUID and normalised DN, and the reverse
// membership index (which groups list a DN).

import (
	"slices"
	"strings"

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
	attrs attrList // what the contribution is computed from
	// members are the normalised uniqueMember DNs of a group, in order,
	// with the spelling found in the directory alongside for reports.
	members    []string
	memberDNs  []string
	isGroupish bool
	// bulk is the entry's number in the group graph of the full build
	// that made it (expandall.go): a group's number, or for a member with
	// an address, its address id plus one (0: not numbered yet).
	bulk int32
	// memberAddr is what a group listing this (non-group) entry expands
	// it to: its primary address, lowercased, or "" when none or invalid.
	memberAddr string
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
	*e = entry{uuid: uuid, dn: dn, ndn: identity.NormDN(dn), kind: kind, attrs: keptAttrs(kind, attrs)}
	if kind != event.KindGroup {
		if v := attrs.First(event.AttrPrimaryAddress); v != "" && validHome(kind, attrs.First(event.AttrHomeServer)) {
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
func validHome(kind event.Kind, home string) bool {
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
	m.byUUID[e.uuid] = e
	if old == nil || old.ndn != e.ndn {
		m.remove(old)
		m.indexEntry(e)
		return old
	}
	// The same DN: e takes old's place in the DN index, and only the
	// members gained or lost change the membership index, so a change to a
	// large group costs what it changes.
	for i, x := range m.byDN[e.ndn] {
		if x == old {
			m.byDN[e.ndn][i] = e
			break
		}
	}
	gone, added := memberDiff(old.members, e.members)
	m.unindexMembers(old.uuid, gone)
	m.indexMembers(e.uuid, added)
	return old
}

// memberDiff returns the members of old not in new and those of new not in
// old (repeats possible): at once when new only appends to old.
func memberDiff(old, new []string) (gone, added []string) {
	if len(new) >= len(old) && slices.Equal(new[:len(old)], old) {
		return nil, new[len(old):]
	}
	in := func(s []string) set {
		out := make(set, len(s))
		for _, v := range s {
			out[v] = struct{}{}
		}
		return out
	}
	was, is := in(old), in(new)
	for _, v := range old {
		if _, ok := is[v]; !ok {
			gone = append(gone, v)
		}
	}
	for _, v := range new {
		if _, ok := was[v]; !ok {
			added = append(added, v)
		}
	}
	return gone, added
}

// indexEntry adds e to the DN index (entries sharing a DN kept in UUID
// order) and to the reverse membership index of each group it lists.
func (m *model) indexEntry(e *entry) {
	m.indexDN(e)
	m.indexMembers(e.uuid, e.members)
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

// indexMembers adds the group with uuid to the reverse membership index of
// each of members.
func (m *model) indexMembers(uuid string, members []string) {
	_, uuidSlab, _, _ := m.slabs()
	for _, mem := range members {
		switch ps := m.parents[mem]; {
		case len(ps) == 0:
			m.parents[mem] = uuidSlab.one(uuid)
		case !slices.Contains(ps, uuid):
			m.parents[mem] = append(ps, uuid)
		}
	}
}

// unindexMembers removes the group with uuid from the reverse membership
// index of each of members.
func (m *model) unindexMembers(uuid string, members []string) {
	for _, mem := range members {
		ps := m.parents[mem]
		if i := slices.Index(ps, uuid); i >= 0 {
			if len(ps) == 1 {
				delete(m.parents, mem)
			} else {
				m.parents[mem] = append(ps[:i:i], ps[i+1:]...)
			}
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
	m.unindexMembers(old.uuid, old.members)
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
