package testenv

import (
	"testing"
	"time"

	"mailsync/event"
)

func TestSlapdStartsWithUCSSchema(t *testing.T) {
	start := time.Now()
	s := StartSlapd(t)
	t.Logf("slapd up in %s", time.Since(start))
	u := s.AddUser(t, "alice", "Alice@Example.org", map[string][]string{"mailAlternativeAddress": {"a@example.org"}, "univentionMailHomeServer": {"mail.example.org"}})
	s.AddGroup(t, "staff", "staff@example.org", []string{u}, nil)
	s.Add(t, "cn=list1,ou=groups,"+s.BaseDN, map[string][]string{"objectClass": {"univentionMailList"}, "cn": {"list1"}, "mailPrimaryAddress": {"list1@example.org"}, "univentionMailMember": {"x@ext.org"}})
	s.Add(t, "cn=example.org,"+s.BaseDN, map[string][]string{"objectClass": {"univentionMailDomainname"}, "cn": {"example.org"}})
	s.Add(t, "cn=shared,"+s.BaseDN, map[string][]string{"objectClass": {"univentionMailSharedFolder"}, "cn": {"shared"}, "mailPrimaryAddress": {"shared@example.org"}})
	got := map[event.Kind]int{}
	for _, e := range s.Entries(t) {
		got[e.Kind]++
		if e.UUID == "" {
			t.Errorf("entry %s has no entryUUID", e.DN)
		}
	}
	want := map[event.Kind]int{event.KindUser: 1, event.KindGroup: 1, event.KindList: 1, event.KindDomain: 1, event.KindFolder: 1}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("kind %s: got %d entries, want %d", k, got[k], n)
		}
	}
	s.Stop(t)
	s.Start(t)
	if n := len(s.Entries(t)); n != 5 {
		t.Errorf("after restart: %d entries, want 5", n)
	}
	s.Wipe(t)
	if n := len(s.Entries(t)); n != 0 {
		t.Errorf("after wipe: %d entries, want 0", n)
	}
}
