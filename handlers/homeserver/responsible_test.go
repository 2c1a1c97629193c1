package homeserver

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
