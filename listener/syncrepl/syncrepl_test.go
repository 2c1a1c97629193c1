package syncrepl_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/ldapconn"
	"mailsync/listener/syncrepl"
)

// seen is a message in a form both clients produce, for comparing them.
type seen struct {
	Kind           string
	DN             string
	Attrs          map[string][]string
	State          int
	UUID           string
	Cookie         string
	RefreshDone    bool
	RefreshDeletes bool
	UUIDs          []string
}

func (s seen) String() string {
	if len(s.Attrs["description"]) > 0 {
		s.Attrs = map[string][]string{"description": {fmt.Sprintf("%d bytes", len(s.Attrs["description"][0]))}}
	}
	type plain seen
	return fmt.Sprintf("%+v", plain(s))
}

// viaGoLDAP runs a refreshOnly sync search with go-ldap.
func viaGoLDAP(t *testing.T, s *testenv.Slapd, cookie []byte, attrs []string) []seen {
	t.Helper()
	conn := s.Conn(t)
	req := ldap.NewSearchRequest(s.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		event.Filter, attrs, nil)
	resp := conn.Syncrepl(context.Background(), req, 16, ldap.SyncRequestModeRefreshOnly, cookie, false)
	var out []seen
	for resp.Next() {
		for _, c := range resp.Controls() {
			switch c := c.(type) {
			case *ldap.ControlSyncState:
				e := resp.Entry()
				m := seen{Kind: "entry", DN: e.DN, Attrs: map[string][]string{}, State: int(c.State),
					UUID: c.EntryUUID.String(), Cookie: string(c.Cookie)}
				for _, a := range e.Attributes {
					m.Attrs[a.Name] = a.Values
				}
				out = append(out, m)
			case *ldap.ControlSyncDone:
				out = append(out, seen{Kind: "done", Cookie: string(c.Cookie), RefreshDeletes: c.RefreshDeletes})
			case *ldap.ControlSyncInfo:
				m := seen{Kind: "info"}
				switch c.Value {
				case ldap.SyncInfoNewcookie:
					m.Cookie = string(c.NewCookie.Cookie)
				case ldap.SyncInfoRefreshDelete:
					m.Cookie, m.RefreshDone = string(c.RefreshDelete.Cookie), c.RefreshDelete.RefreshDone
				case ldap.SyncInfoRefreshPresent:
					m.Cookie, m.RefreshDone = string(c.RefreshPresent.Cookie), c.RefreshPresent.RefreshDone
				case ldap.SyncInfoSyncIdSet:
					m.Cookie, m.RefreshDeletes = string(c.SyncIdSet.Cookie), c.SyncIdSet.RefreshDeletes
					for _, u := range c.SyncIdSet.SyncUUIDs {
						m.UUIDs = append(m.UUIDs, u.String())
					}
				}
				out = append(out, m)
			}
		}
	}
	if err := resp.Err(); err != nil {
		t.Fatalf("go-ldap sync search: %v", err)
	}
	return out
}

// viaSyncrepl runs the same search with this package.
func viaSyncrepl(t *testing.T, s *testenv.Slapd, cookie []byte, attrs []string) []seen {
	t.Helper()
	ctx := context.Background()
	c, err := syncrepl.Dial(ctx, ldapconn.Target{URL: s.URL, BindDN: s.AdminDN, BindPassword: s.AdminPW})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Search(ctx, syncrepl.Request{BaseDN: s.BaseDN, Filter: event.Filter, Attributes: attrs,
		Mode: syncrepl.ModeRefreshOnly, Cookie: cookie})
	if err != nil {
		t.Fatal(err)
	}
	var out []seen
	for {
		m, err := st.Next()
		if errors.Is(err, syncrepl.ErrEnded) {
			return out
		}
		if err != nil {
			t.Fatalf("sync search: %v", err)
		}
		switch m.Kind {
		case syncrepl.KindEntry:
			if !m.HasState {
				t.Fatalf("entry %s without sync state", m.DN)
			}
			x := seen{Kind: "entry", DN: m.DN, Attrs: map[string][]string{}, State: int(m.State),
				UUID: m.UUID.String(), Cookie: string(m.Cookie)}
			for _, a := range m.Attributes {
				x.Attrs[a.Name] = a.Values
			}
			out = append(out, x)
		case syncrepl.KindDone:
			out = append(out, seen{Kind: "done", Cookie: string(m.Cookie), RefreshDeletes: m.RefreshDeletes})
		case syncrepl.KindInfo:
			x := seen{Kind: "info", Cookie: string(m.Cookie), RefreshDone: m.RefreshDone, RefreshDeletes: m.RefreshDeletes}
			for _, u := range m.UUIDs {
				x.UUIDs = append(x.UUIDs, u.String())
			}
			out = append(out, x)
		}
	}
}

// The decoder reads what go-ldap reads, message for message, from a real
// slapd: a full refresh, and a resumed one after adds, changes and deletes
// (which slapd reports with present/delete sync info).
func TestSameAsGoLDAP(t *testing.T) {
	base := "dc=example,dc=org"
	ldif := testenv.GenerateLDIF(t, base, testenv.DirectoryShape{Users: 300, Groups: 15, Members: 20, Nested: 5})
	s := testenv.StartSlapdWith(t, testenv.SlapdOptions{Preload: ldif})
	attrs := append([]string{"entryCSN", "entryUUID"}, event.Followed...)

	full, ours := viaGoLDAP(t, s, nil, attrs), viaSyncrepl(t, s, nil, attrs)
	compare(t, "full refresh", full, ours)
	if len(full) < 315 {
		t.Fatalf("full refresh read %d messages, want at least 315", len(full))
	}
	last := full[len(full)-1]
	if last.Kind != "done" || last.Cookie == "" {
		t.Fatalf("full refresh ends with %v, want the done control's cookie", last)
	}
	cookie := []byte(last.Cookie)

	// A multi-valued attribute, a non-ASCII value, a long value (a
	// multi-byte BER length), an add and deletes since the cookie.
	s.Modify(t, s.UserDN("u1"), map[string][]string{
		event.AttrAlternativeAddress: {"a@example.org", "b@example.org", "c@example.org"},
		"description":                {strings.Repeat("ä", 35000)},
	})
	s.AddUser(t, "newcomer", "newcomer@example.org", nil)
	s.Delete(t, s.UserDN("u2"))
	s.Delete(t, s.UserDN("u3"))
	s.Add(t, "cn=plain,"+base, map[string][]string{"objectClass": {"organizationalRole"}, "cn": {"plain"}})

	withDesc := append(attrs, "description")
	resumed, ours := viaGoLDAP(t, s, cookie, withDesc), viaSyncrepl(t, s, cookie, withDesc)
	compare(t, "resumed refresh", resumed, ours)
	var sawLong, sawInfo bool
	kinds := map[string]int{}
	for _, m := range ours {
		kinds[fmt.Sprintf("%s/%d/%d", m.Kind, m.State, len(m.UUIDs))]++
		sawLong = sawLong || len(m.Attrs["description"]) == 1 && len(m.Attrs["description"][0]) == 70000
		sawInfo = sawInfo || m.Kind == "info"
	}
	t.Logf("resumed refresh (kind/state/uuids: count): %v", kinds)
	if !sawLong || !sawInfo {
		t.Fatalf("resumed refresh lacks the long value (%v) or a sync info message (%v); %d messages", sawLong, sawInfo, len(ours))
	}
}

func compare(t *testing.T, what string, want, got []seen) {
	t.Helper()
	for _, l := range [][]seen{want, got} {
		for _, m := range l {
			sort.Strings(m.UUIDs)
		}
	}
	if len(want) != len(got) {
		t.Fatalf("%s: go-ldap read %d messages, syncrepl %d", what, len(want), len(got))
	}
	for i := range want {
		if !reflect.DeepEqual(want[i], got[i]) {
			t.Fatalf("%s: message %d differs:\ngo-ldap:  %v\nsyncrepl: %v", what, i, want[i], got[i])
		}
	}
}

// A broken filter is not sent; an ended context ends a search that waits
// for changes. (Connecting and binding are package ldapconn's, tested there.)
func TestErrorsAndCancel(t *testing.T) {
	s := testenv.StartSlapd(t)
	ctx := context.Background()
	c, err := syncrepl.Dial(ctx, ldapconn.Target{URL: s.URL, BindDN: s.AdminDN, BindPassword: s.AdminPW})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Search(ctx, syncrepl.Request{BaseDN: s.BaseDN, Filter: "(objectClass=*"}); err == nil {
		t.Fatal("a broken filter was sent")
	}

	sctx, cancel := context.WithCancel(ctx)
	st, err := c.Search(sctx, syncrepl.Request{BaseDN: s.BaseDN, Filter: "(objectClass=*)",
		Mode: syncrepl.ModeRefreshAndPersist})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for {
			m, err := st.Next()
			if err != nil {
				done <- err
				return
			}
			if m.Kind == syncrepl.KindInfo && m.RefreshDone {
				cancel() // refresh over: the search now waits for changes
			}
		}
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("search ended with %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("cancelling the context did not end the search")
	}

}
