package event

import (
	"testing"
	"time"
)

func TestKindOfAndAttrs(t *testing.T) {
	for _, c := range []struct {
		classes []string
		uid     bool
		want    Kind
		ok      bool
	}{
		{[]string{"inetOrgPerson", "univentionMail"}, true, KindUser, true},
		{[]string{"inetOrgPerson", "univentionMail"}, false, "", false}, // no uid: not a user
		{[]string{"posixGroup", "univentionGroup"}, false, KindGroup, true},
		{[]string{"univentionMailList"}, false, KindList, true},
		{[]string{"univentionMailSharedFolder"}, false, KindFolder, true},
		{[]string{"univentionMailDomainname"}, false, KindDomain, true},
		{[]string{"UNIVENTIONMAIL"}, true, KindUser, true}, // object classes compare case-insensitively
		{[]string{"organizationalUnit"}, false, "", false},
	} {
		raw := map[string][]string{"objectclass": c.classes}
		if c.uid {
			raw["UID"] = []string{"x"}
		}
		got, ok := KindOf(NewAttrs(raw))
		if got != c.want || ok != c.ok {
			t.Errorf("KindOf(%v, uid=%v) = %q %v, want %q %v", c.classes, c.uid, got, ok, c.want, c.ok)
		}
	}
	a := NewAttrs(map[string][]string{"MailPrimaryAddress": {" Foo@Example.ORG "}, "sn": {"ignored"}, "mailAlternativeAddress": {}})
	if _, ok := a["sn"]; ok {
		t.Error("an attribute mailsync does not follow was kept")
	}
	if _, ok := a[AttrAlternativeAddress]; ok {
		t.Error("an attribute without values was kept")
	}
	if got := a.FirstLower(AttrPrimaryAddress); got != "foo@example.org" {
		t.Errorf("FirstLower = %q", got)
	}
	if !a.Equal(Attrs{AttrPrimaryAddress: {" Foo@Example.ORG "}}) || a.Equal(Attrs{AttrPrimaryAddress: {"x"}}) {
		t.Error("Equal")
	}
	ev := Event{UUID: "u1", Op: OpModify, Kind: KindUser, CSN: "c1"}
	if ev.MsgID() != "u1:modify:c1" || ev.Subject() != "mailsync.user.u1" {
		t.Errorf("MsgID %q Subject %q", ev.MsgID(), ev.Subject())
	}
}

// TestChangeTime reads the time of every change id the listener makes: an
// OpenLDAP entryCSN (microseconds) and a 389-DS id built on the entry's
// modifyTimestamp (whole seconds); ids without a time give none.
func TestChangeTime(t *testing.T) {
	for _, c := range []struct {
		csn  string
		want time.Time
		ok   bool
	}{
		{"20261125154404.854073Z#000000#000#000000", time.Date(2026, 11, 25, 15, 44, 4, 854073000, time.UTC), true},
		{"20261125154404Z#cn42", time.Date(2026, 11, 25, 15, 44, 4, 0, time.UTC), true},
		{"20261125154404Z#r17.00000000deadbeef", time.Date(2026, 11, 25, 15, 44, 4, 0, time.UTC), true},
		{"cn42", time.Time{}, false},
		{"", time.Time{}, false},
		{"#cn42", time.Time{}, false},
		{"2026112515440Z#x", time.Time{}, false},
	} {
		got, ok := ChangeTime(c.csn)
		if ok != c.ok || !got.Equal(c.want) {
			t.Errorf("ChangeTime(%q) = %v %v, want %v %v", c.csn, got, ok, c.want, c.ok)
		}
	}
}
