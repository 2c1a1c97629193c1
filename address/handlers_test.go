package address_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/rs/zerolog"

	"mailsync/dovecotadm"
	"mailsync/event"
	"mailsync/handlers/aliases"
	"mailsync/handlers/homeserver"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
)

const host = "mail.example.org"

// mailHost is one mail host as `mailsync run` wires it: slapd, Dovecot,
// postmap and the three handlers behind the listener and the runner.
type mailHost struct {
	ldap   *testenv.Slapd
	dc     *testenv.Dovecot
	pf     *testenv.Postfix
	mapDir string
	p      *testenv.Pipeline
}

func startMailHost(t *testing.T, del bool) *mailHost {
	t.Helper()
	ldap := testenv.StartSlapd(t)
	for _, ou := range []string{"lists", "folders", "domains"} {
		ldap.Add(t, "ou="+ou+","+ldap.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {ou}})
	}
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: host, SharedFolders: true})
	adm, err := dovecotadm.New(dc.DoveadmURL, dc.APIKey, dovecotadm.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	mb, err := mailbox.New(mailbox.Config{Host: host, MailHome: dc.MailHome, Rename: true, Delete: del,
		StateDir: t.TempDir(), UID: -1, GID: -1}, adm, log, mailbox.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	pf := testenv.StartPostfix(t)
	m := &mailHost{ldap: ldap, dc: dc, pf: pf, mapDir: t.TempDir()}
	al, err := aliases.New(aliases.Config{Dir: m.mapDir, PostmapPath: pf.Postmap, PostfixConfigDir: pf.ConfigDir, HostFQDN: host}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	hs, err := homeserver.New(homeserver.Config{Host: host, Dir: m.mapDir, PostmapPath: pf.Postmap, PostfixConfigDir: pf.ConfigDir})
	if err != nil {
		t.Fatal(err)
	}
	m.p = testenv.StartPipeline(t, ldap, host, mb, al, hs)
	return m
}

var tables = []string{aliases.AliasMap, aliases.MailboxMap, aliases.DomainMap, homeserver.TransportMap}

// lookup resolves keys in one table with postmap -q.
func (m *mailHost) lookup(t *testing.T, table string, keys ...string) map[string]string {
	t.Helper()
	return m.pf.Query(t, "hash:"+filepath.Join(m.mapDir, table), keys...)
}

// homes lists the homes in the spool as local@domain.
func (m *mailHost) homes(t *testing.T) []string {
	t.Helper()
	spool := filepath.Dir(filepath.Dir(m.dc.MailHome))
	var out []string
	domains, err := os.ReadDir(spool)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range domains {
		if !d.IsDir() || strings.HasPrefix(d.Name(), ".mailsync") {
			continue
		}
		locals, err := os.ReadDir(filepath.Join(spool, d.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range locals {
			out = append(out, l.Name()+"@"+d.Name())
		}
	}
	sort.Strings(out)
	return out
}

// carrier is one attribute that carries an address, on one kind of entry,
// and the handlers that read it there.
type carrier struct {
	name     string
	attr     string
	handlers []string
	// hosts: the attribute holds a host name (testenv.HostileHosts), not
	// an address.
	hosts bool
	// homes: the entry's valid address gets a mailbox here (users, and
	// shared folders homed here).
	homes bool
	// add creates an entry with v in attr (and valid values elsewhere) and
	// returns its DN and the valid addresses it brings.
	add func(t *testing.T, l *testenv.Slapd, n, v string) (dn string, valid []string)
}

func carriers(memberDN string) []carrier {
	all := []string{"aliases", "homeserver", "mailbox"}
	maps := []string{"aliases", "homeserver"}
	onlyAliases := []string{"aliases"}
	list := func(l *testenv.Slapd, t *testing.T, n, primary string, members []string) string {
		dn := "cn=" + n + ",ou=lists," + l.BaseDN
		l.Add(t, dn, map[string][]string{"objectClass": {"univentionMailList"}, "cn": {n},
			event.AttrPrimaryAddress: {primary}, event.AttrMailMember: members})
		return dn
	}
	folder := func(l *testenv.Slapd, t *testing.T, n, primary string, alts []string) string {
		dn := "cn=" + n + ",ou=folders," + l.BaseDN
		a := map[string][]string{"objectClass": {"univentionMailSharedFolder"}, "cn": {n},
			event.AttrPrimaryAddress: {primary}, event.AttrHomeServer: {host}}
		if len(alts) > 0 {
			a[event.AttrAlternativeAddress] = alts
		}
		l.Add(t, dn, a)
		return dn
	}
	return []carrier{
		{"user-primary", event.AttrPrimaryAddress, all, false, false, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return l.AddUser(t, n, v, nil), nil
		}},
		{"user-alternative", event.AttrAlternativeAddress, onlyAliases, false, true, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return l.AddUser(t, n, n+"@example.org", map[string][]string{event.AttrAlternativeAddress: {v}}), []string{n + "@example.org"}
		}},
		{"user-forward", event.AttrForwardAddress, onlyAliases, false, true, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return l.AddUser(t, n, n+"@example.org", map[string][]string{event.AttrForwardAddress: {v}}), []string{n + "@example.org"}
		}},
		{"group-primary", event.AttrPrimaryAddress, maps, false, false, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return l.AddGroup(t, n, v, []string{memberDN}, nil), nil
		}},
		{"group-alternative", event.AttrAlternativeAddress, onlyAliases, false, false, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return l.AddGroup(t, n, n+"@example.org", []string{memberDN}, map[string][]string{event.AttrAlternativeAddress: {v}}), []string{n + "@example.org"}
		}},
		{"list-primary", event.AttrPrimaryAddress, maps, false, false, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return list(l, t, n, v, []string{"member@example.org"}), nil
		}},
		{"list-member", event.AttrMailMember, onlyAliases, false, false, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return list(l, t, n, n+"@example.org", []string{"member@example.org", v}), []string{n + "@example.org"}
		}},
		{"folder-primary", event.AttrPrimaryAddress, all, false, false, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return folder(l, t, n, v, nil), nil
		}},
		{"user-home-server", event.AttrHomeServer, all, true, false, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return l.AddUser(t, n, n+"@example.org", map[string][]string{event.AttrHomeServer: {v}}), nil
		}},
		{"folder-home-server", event.AttrHomeServer, all, true, false, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			dn := "cn=" + n + ",ou=folders," + l.BaseDN
			l.Add(t, dn, map[string][]string{"objectClass": {"univentionMailSharedFolder"}, "cn": {n},
				event.AttrPrimaryAddress: {n + "@example.org"}, event.AttrHomeServer: {v}})
			return dn, nil
		}},
		{"folder-alternative", event.AttrAlternativeAddress, onlyAliases, false, true, func(t *testing.T, l *testenv.Slapd, n, v string) (string, []string) {
			return folder(l, t, n, n+"@example.org", []string{v}), []string{n + "@example.org"}
		}},
	}
}

// TestEveryHandlerRefusesAlike drives each hostile address through each
// attribute that carries one, on each kind of entry, into a mail host with
// the three handlers: each value is refused by every handler that reads the
// attribute, with one dead letter per handler naming the entry's DN and the
// attribute, and it is in no map, trimmed or not, and gets no mailbox. The
// entries' valid addresses are applied as usual. Mail domains likewise.
func TestEveryHandlerRefusesAlike(t *testing.T) {
	m := startMailHost(t, false)
	memberDN := m.ldap.AddUser(t, "member", "member@example.org", nil)
	m.p.Settled(t)

	// want: DN -> the handlers that must dead-letter it, and the attribute.
	type refusal struct {
		attr     string
		handlers []string
	}
	want := map[string]refusal{}
	valid := []string{"member@example.org"}
	withHomes := []string{"member@example.org"}
	var hostile []string
	for ci, c := range carriers(memberDN) {
		values := testenv.HostileAddresses()
		if c.hosts {
			values = testenv.HostileHosts()
		}
		for hi, h := range values {
			n := fmt.Sprintf("c%dh%d", ci, hi)
			dn, ok := c.add(t, m.ldap, n, h.Value)
			want[dn] = refusal{c.attr, c.handlers}
			valid = append(valid, ok...)
			if c.homes {
				withHomes = append(withHomes, ok...)
			}
			hostile = append(hostile, h.Value)
		}
	}
	var hostileDomains []string
	for hi, h := range testenv.HostileDomains() {
		dn := fmt.Sprintf("cn=d%d,ou=domains,%s", hi, m.ldap.BaseDN)
		// The RDN's value must be a cn too; d<i> is a valid one-label domain.
		m.ldap.Add(t, dn, map[string][]string{"objectClass": {"univentionMailDomainname"}, "cn": {fmt.Sprintf("d%d", hi), h.Value}})
		want[dn] = refusal{event.AttrCN, []string{"aliases"}}
		hostileDomains = append(hostileDomains, h.Value)
	}
	m.p.Settled(t)

	// Dead letters: exactly the expected handlers, each once, per entry.
	got := map[string][]string{}
	for _, dl := range testenv.DeadLetters(t, m.p.Bus) {
		r, ok := want[dl.DN]
		if !ok {
			t.Errorf("unexpected dead letter of %s by %s: %s", dl.DN, dl.Handler, dl.Reason)
			continue
		}
		if !slices.Contains(dl.Attrs, r.attr) || !strings.Contains(dl.Reason, r.attr) || !strings.Contains(dl.Reason, dl.DN) {
			t.Errorf("dead letter of %s by %s names attributes %v, reason %q; want %s and the DN", dl.DN, dl.Handler, dl.Attrs, dl.Reason, r.attr)
		}
		got[dl.DN] = append(got[dl.DN], dl.Handler)
	}
	for dn, r := range want {
		h := got[dn]
		sort.Strings(h)
		if !slices.Equal(h, r.handlers) {
			t.Errorf("%s (%s): dead-lettered by %v, want by %v", dn, r.attr, h, r.handlers)
		}
	}

	// No map holds a hostile value, as stored, lowercased or trimmed, as a
	// key (postmap -q) or anywhere in its source.
	forms := func(vals []string) []string {
		var out []string
		for _, v := range vals {
			low := strings.ToLower(v)
			out = append(out, v, low, strings.TrimSpace(low), strings.TrimFunc(low, unicode.IsControl))
		}
		return out
	}
	bad := forms(append(append([]string(nil), hostile...), hostileDomains...))
	for _, table := range tables {
		if found := m.lookup(t, table, bad...); len(found) > 0 {
			t.Errorf("%s answers for hostile keys: %v", table, found)
		}
		src, err := os.ReadFile(filepath.Join(m.mapDir, table))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(src), "\n") {
			for _, tok := range strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' }) {
				if slices.Contains(bad, tok) {
					t.Errorf("%s holds %q in line %q", table, tok, line)
				}
			}
		}
	}
	// The valid addresses of the same entries are applied (a mailbox's
	// own address is in virtual_mailbox, not virtual_alias).
	found := m.lookup(t, aliases.AliasMap, valid...)
	for k, v := range m.lookup(t, aliases.MailboxMap, valid...) {
		found[k] = v
	}
	if len(found) != len(valid) {
		t.Errorf("the maps resolve %d of the %d valid addresses: %v", len(found), len(valid), found)
	}
	// Mailboxes: the users with a valid primary address, nothing else.
	sort.Strings(withHomes)
	if homes := m.homes(t); !slices.Equal(homes, withHomes) {
		t.Errorf("homes in the spool %q, want %q", homes, withHomes)
	}
}

// TestHomeServerIsADNSName: a home server written with another case or a
// trailing dot is this host, through the whole pipeline: the mailbox is
// made here and kept (delete=yes would remove it were it another host), no
// transport entry sends the mail away, a shared folder is local; another
// host with a trailing dot is routed to without the dot.
func TestHomeServerIsADNSName(t *testing.T) {
	m := startMailHost(t, true)
	hs := func(h string) map[string][]string { return map[string][]string{event.AttrHomeServer: {h}} }
	here := []string{"mail.example.org.", "MAIL.Example.ORG", "Mail.Example.Org."}
	var users []string
	for i, h := range here {
		users = append(users, fmt.Sprintf("u%d@example.org", i))
		m.ldap.AddUser(t, fmt.Sprintf("u%d", i), users[i], hs(h))
	}
	moved := m.ldap.AddUser(t, "moved", "moved@example.org", hs(host))
	m.ldap.AddUser(t, "away", "away@example.org", hs("MX2.example.org."))
	m.ldap.Add(t, "cn=shared,ou=folders,"+m.ldap.BaseDN, map[string][]string{"objectClass": {"univentionMailSharedFolder"},
		"cn": {"shared"}, event.AttrPrimaryAddress: {"shared@example.org"}, event.AttrHomeServer: {"Mail.Example.org."}})
	m.p.Settled(t)
	m.dc.Deliver(t, "moved@example.org", "kept")

	// The home server gains a trailing dot and another case: still here.
	m.ldap.Modify(t, moved, hs("MAIL.example.org."))
	m.p.Settled(t)

	all := append(append([]string(nil), users...), "moved@example.org")
	sort.Strings(all)
	// The shared folder homed on Mail.Example.org. has its mailbox here.
	withShared := append(append([]string(nil), all...), "shared@example.org")
	sort.Strings(withShared)
	if homes := m.homes(t); !slices.Equal(homes, withShared) {
		t.Errorf("homes %q, want %q", homes, all)
	}
	for _, u := range all {
		if err := m.dc.Login(u, "secret"); err != nil {
			t.Errorf("login %s: %v", u, err)
		}
	}
	// Counted on disk: with the acl plugin for shared folders the master
	// user (testenv's IMAP reader) does not see the user's INBOX.
	var msgs int
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(m.dc.Home("moved@example.org"), "Maildir", sub))
		if err != nil {
			t.Fatal(err)
		}
		msgs += len(ents)
	}
	if msgs != 1 {
		t.Errorf("moved@example.org has %d messages after its home server gained a dot, want 1", msgs)
	}
	if found := m.lookup(t, homeserver.TransportMap, append(all, "shared@example.org")...); len(found) > 0 {
		t.Errorf("transport routes mail for this host's users away: %v", found)
	}
	if got := m.lookup(t, homeserver.TransportMap, "away@example.org")["away@example.org"]; got != "smtp:[mx2.example.org]" {
		t.Errorf("transport for away@example.org = %q, want smtp:[mx2.example.org]", got)
	}
	if got := m.lookup(t, aliases.MailboxMap, "shared@example.org"); len(got) != 1 {
		t.Errorf("shared folder on Mail.Example.org. is not local: virtual_mailbox %v", got)
	}
	if dls := testenv.DeadLetters(t, m.p.Bus); len(dls) > 0 {
		t.Errorf("dead letters: %+v", dls)
	}
}
