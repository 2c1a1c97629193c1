package aliases

// Reports of the problems the current directory state has.

import (
	"fmt"
	"sort"
	"strings"

	"mailsync/address"
)

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
