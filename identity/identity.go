// Package identity is the one rule for who an entry is and where its mail
// lives, shared by every handler and the command line: a DN as compared
// (NormDN: an LDIF's spelling, a member attribute's and the directory's
// name the same entry) and the host responsible for a user's mailbox
// (Responsible: the home server rule, UCS reference §1.2). An entry's
// identity proper is its entryUUID, which the events carry; a DN is only
// how other entries and the operator name it.
package identity

import (
	"sort"
	"strings"

	"github.com/go-ldap/ldap/v3"

	"mailsync/address"
)

// Responsible reports whether the host with FQDN fqdn keeps the mailbox of
// an entry whose univentionMailHomeServer is home: an empty home server
// means every host (UCS, reference §1.2); otherwise only the named host,
// compared as DNS names (case-insensitive, one trailing dot ignored:
// "Mail.Example.org." is "mail.example.org"). The bare hostname is not
// accepted, as in UCS. Values with white space around them are not trimmed:
// the address rule refuses them before (package address).
func Responsible(home, fqdn string) bool {
	return home == "" || address.SameHost(home, fqdn)
}

// NormDN normalises a DN for comparison: attribute types and values
// lowercased, spaces around separators dropped. Most DNs need no escaping,
// so they skip the full parser.
func NormDN(dn string) string {
	if isNorm(dn) {
		return dn
	}
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

// isNorm reports whether dn is already in NormDN's form: no uppercase
// letter, no space, no character needing the parser, '=' in every RDN.
func isNorm(dn string) bool {
	eq := false
	for i := 0; i < len(dn); i++ {
		switch ch := dn[i]; {
		case ch >= 'A' && ch <= 'Z', ch <= ' ', ch == '\\', ch == '"', ch == '+', ch == '#', ch == ';', ch == '<', ch == '>', ch >= 0x80:
			return false
		case ch == '=':
			eq = true
		case ch == ',':
			if !eq {
				return false
			}
			eq = false
		}
	}
	return eq
}
