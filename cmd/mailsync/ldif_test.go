package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseLDIF(t *testing.T) {
	in := "version: 1\n# comment\ndn: uid=a,dc=x\nchangetype: modify\nreplace: mailPrimaryAddress\nmailPrimaryAddress: a@exa\n mple.org\n-\ndelete: mailAlternativeAddress\n\n" +
		"dn:: dWlkPWIsZGM9eA==\nobjectClass: univentionMail\nuid: b\n\n" +
		"dn: uid=c,dc=x\nchangetype: moddn\nnewrdn: uid=d\ndeleteoldrdn: 1\nnewsuperior: ou=p,dc=x\n\n" +
		"dn: uid=e,dc=x\nchangetype: delete\n"
	got, err := parseLDIF(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []ldifChange{
		{line: 3, DN: "uid=a,dc=x", Type: "modify", Mods: []ldifMod{
			{Op: "replace", Attr: "mailPrimaryAddress", Values: []string{"a@example.org"}},
			{Op: "delete", Attr: "mailAlternativeAddress"}}},
		{line: 11, DN: "uid=b,dc=x", Type: "add", Attrs: map[string][]string{"objectClass": {"univentionMail"}, "uid": {"b"}}},
		{line: 15, DN: "uid=c,dc=x", Type: "modrdn", NewRDN: "uid=d", DeleteOld: true, NewSuperior: "ou=p,dc=x"},
		{line: 21, DN: "uid=e,dc=x", Type: "delete"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseLDIF:\n got %+v\nwant %+v", got, want)
	}
	for _, bad := range []string{
		"dn: uid=a\nchangetype: modrdn\n",
		"dn: uid=a\nchangetype: modify\nfrobnicate: x\n",
		"dn: uid=a\nchangetype: rename\n",
		"uid: a\n",
		"dn: uid=a\nphoto:< file:///etc/passwd\n",
	} {
		if _, err := parseLDIF(strings.NewReader(bad)); err == nil {
			t.Errorf("parseLDIF(%q) accepted", bad)
		}
	}
}
