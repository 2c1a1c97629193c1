package aliases

// Contributions: what each entry puts into the three maps, and the owner
// indexes from which each key's line is rendered.

import (
	"sort"

	"mailsync/address"
	"mailsync/event"
)

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
		for _, v := range a.get(attr) {
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
		if len(vals) == 1 {
			// Values are never changed in place: one value's slice is
			// shared (the mailbox's, for a user's addresses).
			c.alias = append(c.alias, aliasKey{key, vals[:1:1]})
			return
		}
		c.alias = append(c.alias, aliasKey{key, sortedUnion(nil, vals)})
	}
	// What entry's init found valid need not be checked again.
	primary := e.memberAddr
	if primary == "" {
		primary = addr(event.AttrPrimaryAddress, a.First(event.AttrPrimaryAddress))
	}
	home := a.First(event.AttrHomeServer)
	if !validHome(e.kind, home) {
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
				put(primary, c.mailbox...) // ldap.virtual_mailbox in the union
			case a.First(event.AttrForwardCopyToSelf) == "1":
				put(primary, append(fwd, primary)...)
			default:
				put(primary, fwd...)
			}
		}
		for _, alt := range alts {
			if primary != "" {
				put(alt, c.mailbox...)
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
		for _, v := range a.get(event.AttrCN) {
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
