package address_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"mailsync/address"
	"mailsync/internal/testenv"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	long := strings.Repeat
	for _, tc := range []struct {
		addr, want string
	}{
		{"alice@example.org", "alice@example.org"},
		{"Alice@Example.ORG", "alice@example.org"},
		{"first.last+tag@sub.example.org", "first.last+tag@sub.example.org"},
		{"under_score@my_host.example.org", "under_score@my_host.example.org"},
		{"jörg@exämple.org", "jörg@exämple.org"},
		{long("a", 64) + "@example.org", long("a", 64) + "@example.org"},
		{"a@" + long("b", 63) + "." + long("c", 63) + "." + long("d", 63) + "." + long("e", 60), // 254 octets
			"a@" + long("b", 63) + "." + long("c", 63) + "." + long("d", 63) + "." + long("e", 60)},
	} {
		got, err := address.Check("mailPrimaryAddress", tc.addr)
		if err != nil || got != tc.want {
			t.Errorf("Check(%q) = %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
	bad := []string{
		"", "noat", "two@at@example.org", "@example.org", "alice@",
		"..@example.org", "a..b@example.org", "alice@example.org/..",
		"nul\x00@example.org", "nl\n@example.org", "del\x7f@example.org", "sp ace@example.org",
		"bad\xff@example.org", "#comment@example.org", "a,b@example.org", `q"uote@example.org`, `back\slash@example.org`,
		"alice@example.org.", "alice@-example.org", "alice@example-.org", "alice@exa!mple.org", "alice@exa:mple.org",
		"alice@example..org", "alice@" + long("d", 64) + ".org", "\u00a0alice@example.org", "alice@example.org\u3000",
		"ab@" + long("b", 63) + "." + long("c", 63) + "." + long("d", 63) + "." + long("e", 60),
	}
	for _, h := range testenv.HostileAddresses() {
		bad = append(bad, h.Value)
	}
	for _, v := range bad {
		got, err := address.Check("mailAlternativeAddress", v)
		var ae *address.Error
		if !errors.As(err, &ae) {
			t.Errorf("Check(%q) = %q, %v; want an *address.Error", v, got, err)
			continue
		}
		if ae.Attr != "mailAlternativeAddress" || ae.Value != v || !strings.Contains(err.Error(), "mailAlternativeAddress") {
			t.Errorf("Check(%q): error %q does not name the attribute and value", v, err)
		}
	}
}

func TestSplit(t *testing.T) {
	t.Parallel()
	l, d, err := address.Split("mailPrimaryAddress", "Bob.Smith@Mail.Example.org")
	if err != nil || l != "bob.smith" || d != "mail.example.org" {
		t.Fatalf("Split = %q, %q, %v", l, d, err)
	}
}

func TestDomain(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"example.org", "Example.ORG", "sub-1.example.org", "localhost", "exämple.org"} {
		if got, err := address.Domain("cn", ok); err != nil || got != strings.ToLower(ok) {
			t.Errorf("Domain(%q) = %q, %v", ok, got, err)
		}
	}
	bad := []string{"", "example.org.", "a@example.org", "-x.org", "x..org", " example.org"}
	for _, h := range testenv.HostileDomains() {
		bad = append(bad, h.Value)
	}
	for _, v := range bad {
		if got, err := address.Domain("cn", v); err == nil {
			t.Errorf("Domain(%q) = %q, want an error", v, got)
		}
	}
}

func TestHost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"mail.example.org", "mail.example.org"},
		{"mail.example.org.", "mail.example.org"},
		{"MAIL.Example.Org.", "mail.example.org"},
		{"mx_2.example.org", "mx_2.example.org"},
	} {
		if got, err := address.Host("univentionMailHomeServer", tc.in); err != nil || got != tc.want {
			t.Errorf("Host(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, v := range []string{"", " mail.example.org", "mail.example.org..", "mail/x", "[mail]", "mail example", "müll.example.org", "a@b"} {
		if got, err := address.Host("univentionMailHomeServer", v); err == nil {
			t.Errorf("Host(%q) = %q, want an error", v, got)
		}
	}
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"mail.example.org.", "mail.example.org", true},
		{"Mail.Example.ORG", "mail.example.org.", true},
		{"mail.example.org..", "mail.example.org", false},
		{"mail", "mail.example.org", false},
	} {
		if got := address.SameHost(tc.a, tc.b); got != tc.same {
			t.Errorf("SameHost(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestAttributes(t *testing.T) {
	t.Parallel()
	_, e1 := address.Check("mailAlternativeAddress", "a b@x.org")
	_, e2 := address.Check("mailForwardAddress", "../x@x.org")
	_, e3 := address.Check("mailAlternativeAddress", ".x@x.org")
	err := fmt.Errorf("entry uid=a: %w", address.Join(e1, e2, nil, e3))
	if got := address.Attributes(err); strings.Join(got, ",") != "mailAlternativeAddress,mailForwardAddress" {
		t.Errorf("Attributes = %v", got)
	}
	if got := address.Attributes(errors.New("other")); got != nil {
		t.Errorf("Attributes of a plain error = %v", got)
	}
}
