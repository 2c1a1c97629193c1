package testenv

import (
	"strconv"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
	"mailsync/listener"
)

// LDAPServer is what a listener test needs of a directory: where it is and
// the write helpers. Slapd and DS389 both satisfy it, so one event test runs
// against either server.
type LDAPServer interface {
	Endpoint() Endpoint
	Add(t testing.TB, dn string, attrs map[string][]string)
	TryAdd(t testing.TB, dn string, attrs map[string][]string) error
	Modify(t testing.TB, dn string, replace map[string][]string)
	ModRDN(t testing.TB, dn, newRDN, newSuperior string) string
	Delete(t testing.TB, dn string)
	AddUser(t testing.TB, uid, mail string, extra map[string][]string) string
	AddGroup(t testing.TB, cn, mail string, members []string, extra map[string][]string) string
	UserDN(uid string) string
	GroupDN(cn string) string
	Entries(t testing.TB) []event.Entry
	Start(t testing.TB)
	Stop(t testing.TB)
}

// Endpoint is where a directory is and how to bind to it as its admin.
type Endpoint struct {
	URL     string
	BaseDN  string
	AdminDN string
	AdminPW string
}

// Endpoint is where slapd is and how to bind to it.
func (s *Slapd) Endpoint() Endpoint {
	return Endpoint{URL: s.URL, BaseDN: s.BaseDN, AdminDN: s.AdminDN, AdminPW: s.AdminPW}
}

var (
	_ LDAPServer = (*Slapd)(nil)
	_ LDAPServer = (*DS389)(nil)
)

// entries reads every entry mailsync follows below base, with the identity
// and change id flavor gives it, as the listener stores it.
func entries(t testing.TB, c *ldap.Conn, base string, flavor listener.Flavor) []event.Entry {
	t.Helper()
	attrs := append(flavor.Attributes(), event.Followed...)
	res, err := c.SearchWithPaging(ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree,
		ldap.NeverDerefAliases, 0, 0, false, event.Filter, attrs, nil), 1000)
	if err != nil {
		t.Fatalf("search entries: %v", err)
	}
	out := make([]event.Entry, 0, len(res.Entries))
	for _, e := range res.Entries {
		entry, ok, err := listener.EntryFrom(flavor, e)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			out = append(out, entry)
		}
	}
	return out
}

func addEntry(c *ldap.Conn, dn string, attrs map[string][]string) error {
	req := ldap.NewAddRequest(dn, nil)
	for _, k := range sortedKeys(attrs) {
		req.Attribute(k, attrs[k])
	}
	return c.Add(req)
}

func modifyEntry(c *ldap.Conn, dn string, replace map[string][]string) error {
	req := ldap.NewModifyRequest(dn, nil)
	for _, k := range sortedKeys(replace) {
		req.Replace(k, replace[k])
	}
	return c.Modify(req)
}

func modRDN(c *ldap.Conn, dn, newRDN, newSuperior string) (string, error) {
	if err := c.ModifyDN(ldap.NewModifyDNRequest(dn, newRDN, true, newSuperior)); err != nil {
		return "", err
	}
	parent := newSuperior
	if parent == "" {
		parent = dn[strings.Index(dn, ",")+1:]
	}
	return newRDN + "," + parent, nil
}

// userAttrs are the attributes of a mail user as AddUser creates it.
func userAttrs(uid, mail string, extra map[string][]string) map[string][]string {
	uidCounter.Lock()
	uidCounter.n++
	n := 10000 + uidCounter.n
	uidCounter.Unlock()
	attrs := map[string][]string{
		"objectClass":   {"inetOrgPerson", "posixAccount", "univentionMail"},
		"uid":           {uid},
		"cn":            {uid},
		"sn":            {uid},
		"uidNumber":     {strconv.Itoa(n)},
		"gidNumber":     {"5000"},
		"homeDirectory": {"/home/" + uid},
		"userPassword":  {"secret"},
	}
	if mail != "" {
		attrs["mailPrimaryAddress"] = []string{mail}
	}
	for k, v := range extra {
		attrs[k] = v
	}
	return attrs
}

// groupAttrs are the attributes of a group as AddGroup creates it.
func groupAttrs(cn, mail string, members []string, extra map[string][]string) map[string][]string {
	uidCounter.Lock()
	uidCounter.n++
	n := 20000 + uidCounter.n
	uidCounter.Unlock()
	attrs := map[string][]string{
		"objectClass": {"posixGroup", "univentionGroup"},
		"cn":          {cn},
		"gidNumber":   {strconv.Itoa(n)},
	}
	if mail != "" {
		attrs["mailPrimaryAddress"] = []string{mail}
	}
	if len(members) > 0 {
		attrs["uniqueMember"] = members
	}
	for k, v := range extra {
		attrs[k] = v
	}
	return attrs
}
