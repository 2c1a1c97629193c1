package aliases

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"mailsync/internal/testenv"
)

const hostFQDN = "mail.example.org"

// ucsTables writes Postfix ldap: table files with UCS's query filters and
// result attributes (reference §3.3) against the test slapd, and returns
// the alias tables in unionmap order, the mailbox tables and the domain
// table. Deliberate deviations from the stored templates: the groups filter
// also matches a group's mailAlternativeAddress (UCS test
// 49_mailAlternativeAddress), and virtual_mailbox in the alias union
// carries the mailForwardCopyToSelf clause (§5.2) that mailsync follows.
func ucsTables(t testing.TB, s *testenv.Slapd) (alias, mailbox []string, domains string) {
	dir := t.TempDir()
	write := func(name, filter string, extra ...string) string {
		p := filepath.Join(dir, name)
		body := fmt.Sprintf("server_host = %s\nsearch_base = %s\nscope = sub\nbind = no\nversion = 3\nquery_filter = %s\n%s\n",
			s.URL, s.BaseDN, filter, strings.Join(extra, "\n"))
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return "ldap:" + p
	}
	mb := "(&(objectClass=univentionMail)(mailPrimaryAddress=%s)(!(univentionCanonicalRecipientRewriteEnabled=1))"
	alias = []string{
		write("ldap.groups", "(&(|(mailPrimaryAddress=%s)(mailAlternativeAddress=%s))(objectclass=posixGroup))",
			"result_attribute = mailPrimaryAddress", "leaf_result_attribute = mailPrimaryAddress", "special_result_attribute = uniqueMember"),
		write("ldap.distlist", "(&(objectClass=univentionMailList)(mailPrimaryAddress=%s))", "result_attribute = univentionMailMember"),
		write("ldap.virtual", "(&(objectClass=univentionMail)(mailAlternativeAddress=%s)(!(univentionCanonicalRecipientRewriteEnabled=1)))",
			"result_attribute = mailPrimaryAddress"),
		write("ldap.external_aliases", "(&(objectClass=univentionMail)(|(mailAlternativeAddress=%s)(mailPrimaryAddress=%s))(!(univentionCanonicalRecipientRewriteEnabled=1)))",
			"result_attribute = mailForwardAddress"),
		write("ldap.sharedfolderremote", "(&(objectClass=univentionMailSharedFolder)(|(mailPrimaryAddress=%s)(mailAlternativeAddress=%s))(!(univentionMailHomeServer="+hostFQDN+")))",
			"result_attribute = mailPrimaryAddress"),
		write("ldap.sharedfolderlocal_aliases", "(&(objectClass=univentionMailSharedFolder)(mailAlternativeAddress=%s)(univentionMailHomeServer="+hostFQDN+"))",
			"result_attribute = mailPrimaryAddress"),
		write("ldap.virtual_mailbox.copytoself", mb+"(!(&(mailForwardAddress=*)(mailForwardCopyToSelf=0))))",
			"result_attribute = mailPrimaryAddress"),
		write("ldap.sharedfolderlocal", "(&(objectClass=univentionMailSharedFolder)(mailPrimaryAddress=%s)(univentionMailHomeServer="+hostFQDN+"))",
			"result_attribute = mailPrimaryAddress"),
	}
	mailbox = []string{write("ldap.virtual_mailbox", mb+")", "result_attribute = mailPrimaryAddress"), alias[7]}
	domains = write("ldap.virtualdomains", "(&(objectClass=univentionMailDomainname)(cn=%s))", "result_attribute = cn")
	return alias, mailbox, domains
}

// lookups memoises batched `postmap -q -` lookups over a union of tables.
type lookups struct {
	t      testing.TB
	pf     *testenv.Postfix
	tables []string
	res    map[string][]string // nil value: not found
	done   map[string]bool
}

func newLookups(t testing.TB, pf *testenv.Postfix, tables ...string) *lookups {
	return &lookups{t: t, pf: pf, tables: tables, res: map[string][]string{}, done: map[string]bool{}}
}

// closure queries keys and everything their results lead to.
func (l *lookups) closure(keys []string) {
	for len(keys) > 0 {
		var q []string
		for _, k := range keys {
			if !l.done[k] {
				l.done[k] = true
				q = append(q, k)
			}
		}
		keys = nil
		if len(q) == 0 {
			return
		}
		for _, tbl := range l.tables {
			got := l.pf.Query(l.t, tbl, q...)
			for k, v := range got {
				l.res[k] = append(l.res[k], splitValues(v)...)
			}
		}
		for _, k := range q {
			keys = append(keys, l.res[k]...)
		}
	}
}

// query looks keys up without following the results.
func (l *lookups) query(keys []string) {
	for _, tbl := range l.tables {
		for k, v := range l.pf.Query(l.t, tbl, keys...) {
			l.res[k] = append(l.res[k], splitValues(v)...)
		}
	}
}

// finals expands addr as Postfix's cleanup does: recursively, each address
// once, an address that maps to itself (or to nothing) is final.
func (l *lookups) finals(addr string) []string {
	seen := map[string]bool{}
	out := map[string]bool{}
	var walk func(a string)
	walk = func(a string) {
		if seen[a] {
			return
		}
		seen[a] = true
		vals, ok := l.res[a]
		if !ok {
			out[a] = true
			return
		}
		for _, v := range vals {
			if v == a {
				out[a] = true
			} else {
				walk(v)
			}
		}
	}
	walk(addr)
	var s []string
	for a := range out {
		s = append(s, a)
	}
	sort.Strings(s)
	return s
}

// Every address of a generated directory (1k users, 100 groups nested 4
// deep, alternative addresses, forwards, lists, shared folders, collisions)
// resolves to the same final recipients through mailsync's materialised map
// as through UCS's live ldap: tables on the same slapd.
func TestDifferentialAgainstUCSLDAPTables(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t)
	pf := testenv.StartPostfix(t)
	pf.RequireMapType(t, "ldap")
	for _, ou := range []string{"lists", "folders", "domains"} {
		s.Add(t, "ou="+ou+","+s.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {ou}})
	}
	r := rand.New(rand.NewPCG(5, 5))
	doms := []string{"example.org", "example.net"}
	var addrs []string // every address to check
	var userDNs []string
	nUsers := 1000
	for i := 0; i < nUsers; i++ {
		uid := fmt.Sprintf("user%04d", i)
		primary := fmt.Sprintf("%s@%s", uid, doms[i%2])
		extra := map[string][]string{}
		if i%10 == 9 {
			primary = "" // a user without an address
		}
		if i%3 == 0 {
			alt := fmt.Sprintf("alias%04d@%s", i, doms[(i+1)%2])
			extra["mailAlternativeAddress"] = []string{alt}
			addrs = append(addrs, alt)
		}
		if i%7 == 0 && primary != "" {
			fwd := []string{fmt.Sprintf("fwd%04d@outside.test", i)}
			copySelf := fmt.Sprint(i % 2)
			if copySelf == "1" {
				fwd = append(fwd, primary) // UDM keeps the copy in the forward list
			}
			extra["mailForwardAddress"] = fwd
			extra["mailForwardCopyToSelf"] = []string{copySelf}
		}
		if i == 11 {
			extra["mailAlternativeAddress"] = []string{"user0000@example.org"} // another user's primary
			addrs = append(addrs, "user0000@example.org")
		}
		if primary != "" {
			addrs = append(addrs, primary)
		}
		userDNs = append(userDNs, s.AddUser(t, uid, primary, extra))
	}
	// 100 groups, 4 levels of 25: level k holds users and groups of level k+1.
	var groupAddrs []string
	level := make([][]string, 4)
	for lv := 3; lv >= 0; lv-- {
		for j := 0; j < 25; j++ {
			cn := fmt.Sprintf("grp%d-%02d", lv, j)
			var members []string
			for k := r.IntN(12); k > 0; k-- {
				members = append(members, userDNs[r.IntN(nUsers)])
			}
			if lv < 3 {
				for k := 1 + r.IntN(3); k > 0; k-- {
					members = append(members, level[lv+1][r.IntN(25)])
				}
			}
			members = uniq(members)
			if j == 0 && lv == 2 {
				members = append(members, "uid=nobody,ou=people,"+s.BaseDN) // missing member
			}
			mail := ""
			extra := map[string][]string{}
			if j%5 != 4 {
				mail = cn + "@example.org"
				addrs = append(addrs, mail)
				groupAddrs = append(groupAddrs, mail)
			}
			if j%6 == 0 {
				alt := cn + "-alt@example.net"
				extra["mailAlternativeAddress"] = []string{alt}
				addrs = append(addrs, alt)
				groupAddrs = append(groupAddrs, alt)
			}
			if lv == 0 && j == 1 {
				// A group address that is also a user's alternative address.
				s.Modify(t, userDNs[500], map[string][]string{"mailAlternativeAddress": {mail}})
			}
			level[lv] = append(level[lv], s.AddGroup(t, cn, mail, members, extra))
		}
	}
	// An empty group with an address (deliberate difference, below).
	s.AddGroup(t, "emptygrp", "emptygrp@example.org", nil, nil)
	groupAddrs = append(groupAddrs, "emptygrp@example.org")
	// Lists: members are users, a group address, external addresses.
	for j := 0; j < 5; j++ {
		mail := fmt.Sprintf("list%d@example.org", j)
		s.Add(t, fmt.Sprintf("cn=list%d,ou=lists,%s", j, s.BaseDN), map[string][]string{
			"objectClass": {"univentionMailList"}, "cn": {fmt.Sprint("list", j)}, "mailPrimaryAddress": {mail},
			"univentionMailMember": {"user0001@example.net", fmt.Sprintf("ext%d@outside.test", j), "grp1-00@example.org"},
		})
		addrs = append(addrs, mail)
	}
	// A list as a group member.
	s.AddGroup(t, "withlist", "withlist@example.org", []string{"cn=list0,ou=lists," + s.BaseDN, userDNs[2]}, nil)
	addrs = append(addrs, "withlist@example.org")
	groupAddrs = append(groupAddrs, "withlist@example.org")
	// Shared folders, local and remote, with alternative addresses.
	for j, home := range []string{hostFQDN, "other.example.org"} {
		mail := fmt.Sprintf("folder%d@example.org", j)
		alt := fmt.Sprintf("folder%d-alt@example.org", j)
		s.Add(t, fmt.Sprintf("cn=folder%d,ou=folders,%s", j, s.BaseDN), map[string][]string{
			"objectClass": {"univentionMailSharedFolder"}, "cn": {fmt.Sprint("folder", j)},
			"mailPrimaryAddress": {mail}, "mailAlternativeAddress": {alt}, "univentionMailHomeServer": {home},
		})
		addrs = append(addrs, mail, alt)
	}
	for _, d := range doms {
		s.Add(t, "cn="+d+",ou=domains,"+s.BaseDN, map[string][]string{"objectClass": {"univentionMailDomainname"}, "cn": {d}})
	}
	addrs = append(addrs, "nosuch@example.org")

	f := newFixture(t, pf, func(c *Config) { c.HostFQDN = hostFQDN })
	f.load(t, s.Entries(t))

	ucsAlias, ucsMailbox, ucsDomains := ucsTables(t, s)
	ucs := newLookups(t, pf, ucsAlias...)
	ours := newLookups(t, pf, f.table(AliasMap))
	ucs.closure(addrs)
	ours.closure(addrs)

	// A group's own address is never deliverable; UCS's table can return
	// it (an empty group is a leaf), mailsync leaves such a group out.
	drop := map[string]bool{}
	for _, a := range groupAddrs {
		drop[a] = true
	}
	clean := func(s []string) []string {
		var out []string
		for _, a := range s {
			if !drop[a] {
				out = append(out, a)
			}
		}
		return out
	}
	checked, nonTrivial := 0, 0
	for _, a := range addrs {
		u, o := clean(ucs.finals(a)), clean(ours.finals(a))
		if !eq(u, o) {
			t.Errorf("%s: UCS ldap: tables give %v, mailsync's map %v", a, u, o)
		}
		checked++
		if len(u) > 1 || (len(u) == 1 && u[0] != a) {
			nonTrivial++
		}
	}
	t.Logf("%d addresses resolved identically (%d to something other than themselves)", checked, nonTrivial)

	// Mailbox map and domains: the same keys are found.
	ucsMB := newLookups(t, pf, ucsMailbox...)
	oursMB := newLookups(t, pf, f.table(MailboxMap))
	ucsMB.query(addrs)
	oursMB.query(addrs)
	for _, a := range addrs {
		_, u := ucsMB.res[a]
		_, o := oursMB.res[a]
		if u != o {
			t.Errorf("mailbox map %s: UCS %v, mailsync %v", a, u, o)
		}
	}
	for _, d := range append(doms, "example.com") {
		u := pf.Query(t, ucsDomains, d)
		o := pf.Query(t, f.table(DomainMap), d)
		if len(u) != len(o) {
			t.Errorf("domain %s: UCS %v, mailsync %v", d, u, o)
		}
	}

	// Deliberate difference 1: an empty group. UCS returns its own address
	// (accepted, then undeliverable); mailsync has no entry (rejected at RCPT).
	if got := pf.Query(t, ucsAlias[0], "emptygrp@example.org"); got["emptygrp@example.org"] != "emptygrp@example.org" {
		t.Errorf("UCS empty group: %v", got)
	}
	if got := f.lookup(t, AliasMap, "emptygrp@example.org"); got != nil {
		t.Errorf("mailsync empty group: %v", got)
	}
	// Deliberate difference 2: a cycle. UCS's table recurses to its limit
	// and fails (mail deferred); mailsync expands to the union.
	a := s.AddGroup(t, "cyca", "cyca@example.org", []string{userDNs[1]}, nil)
	s.AddGroup(t, "cycb", "cycb@example.org", []string{userDNs[2], a}, nil)
	s.Modify(t, a, map[string][]string{"uniqueMember": {userDNs[1], s.GroupDN("cycb")}})
	if got, err := pf.TryQuery(ucsAlias[0], "cyca@example.org"); err == nil {
		t.Errorf("UCS cycle lookup did not fail: %v", got)
	} else {
		t.Logf("UCS on a cycle: %v", strings.TrimSpace(err.Error()))
	}
	f.load(t, s.Entries(t))
	if got := f.lookup(t, AliasMap, "cyca@example.org"); !eq(got, []string{"user0001@example.net", "user0002@example.org"}) {
		t.Errorf("mailsync cycle: %v", got)
	}
	if c := reportsOf(f.h.Reports(), ReportCycle); len(c) != 1 {
		t.Errorf("cycle reports: %+v", c)
	}
}

func uniq(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}
