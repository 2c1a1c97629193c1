package identity

import "testing"

func TestResponsible(t *testing.T) {
	for _, c := range []struct {
		home, fqdn string
		want       bool
	}{
		{"", "mail.example.org", true},
		{"mail.example.org", "mail.example.org", true},
		{"Mail.Example.ORG", "mail.example.org", true},
		{"mail.example.org.", "mail.example.org", true},
		{"MAIL.example.org.", "Mail.Example.Org", true},
		{"mail.example.org", "mail.example.org.", true},
		{"mail.example.org..", "mail.example.org", false},
		{"mx2.example.org", "mail.example.org", false},
		{"mx2.example.org.", "mail.example.org", false},
		{"mail", "mail.example.org", false},
	} {
		if got := Responsible(c.home, c.fqdn); got != c.want {
			t.Errorf("Responsible(%q, %q) = %v, want %v", c.home, c.fqdn, got, c.want)
		}
	}
}

func TestNormDN(t *testing.T) {
	for _, c := range []struct{ dn, want string }{
		{"uid=alice,ou=people,dc=example,dc=org", "uid=alice,ou=people,dc=example,dc=org"},
		{"UID=Alice, OU=People ,dc=Example,dc=ORG", "uid=alice,ou=people,dc=example,dc=org"},
		{"cn=Sales+mail=S@Example.org,dc=x", "cn=sales+mail=s@example.org,dc=x"},
		{"mail=S@Example.org+cn=Sales,dc=x", "cn=sales+mail=s@example.org,dc=x"},
		{`cn=Smith\, John,dc=x`, "cn=smith, john,dc=x"},
	} {
		if got := NormDN(c.dn); got != c.want {
			t.Errorf("NormDN(%q) = %q, want %q", c.dn, got, c.want)
		}
	}
}
