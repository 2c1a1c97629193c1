package ldapconn_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mailsync/fault"
	"mailsync/internal/testenv"
	"mailsync/ldapconn"
)

// TestOpen connects to a real slapd in every way the config allows —
// plain, StartTLS and LDAPS with the CA verified — and searches on the
// connection; each way of failing gives an error that names what was being
// done and says whether to try again.
func TestOpen(t *testing.T) {
	ca := testenv.NewCA(t)
	s := testenv.StartSlapdWith(t, testenv.SlapdOptions{TLS: ca})
	s.AddUser(t, "olga", "olga@example.org", nil)
	other := testenv.NewCA(t) // did not sign slapd's certificate

	ok := func(name string, target ldapconn.Target, wantTLS bool) {
		t.Run(name, func(t *testing.T) {
			c, err := ldapconn.Dial(context.Background(), target)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, isTLS := c.TLSConnectionState(); isTLS != wantTLS {
				t.Errorf("TLS %v, want %v", isTLS, wantTLS)
			}
			res, err := c.Search(ldap.NewSearchRequest(s.UserDN("olga"), ldap.ScopeBaseObject, ldap.NeverDerefAliases,
				0, 0, false, "(objectClass=*)", []string{"mailPrimaryAddress"}, nil))
			if err != nil || len(res.Entries) != 1 || res.Entries[0].GetAttributeValue("mailPrimaryAddress") != "olga@example.org" {
				t.Fatalf("search after open: %v %v", res, err)
			}
		})
	}
	bind := func(url string, startTLS bool) ldapconn.Target {
		return ldapconn.Target{URL: url, StartTLS: startTLS, TLS: ca.ClientTLS(), BindDN: s.AdminDN, BindPassword: s.AdminPW}
	}
	ok("plain", bind(s.URL, false), false)
	ok("starttls", bind(s.URL, true), true)
	ok("ldaps", bind(s.LDAPSURL, false), true)

	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "ldap://" + addr
	}()
	wrongCA := bind(s.URL, true)
	wrongCA.TLS = other.ClientTLS()
	wrongCAs := bind(s.LDAPSURL, false)
	wrongCAs.TLS = other.ClientTLS()
	wrongPW := bind(s.URL, false)
	wrongPW.BindPassword = "not-the-password"
	for _, c := range []struct {
		name      string
		target    ldapconn.Target
		permanent bool
		says      []string
		code      uint16 // the LDAP result code the error carries, if any
	}{
		{"no server", ldapconn.Target{URL: closed}, false, []string{"connect to " + closed}, 0},
		{"wrong password", wrongPW, true, []string{"bind to " + s.URL + " as " + s.AdminDN}, ldap.LDAPResultInvalidCredentials},
		{"starttls wrong ca", wrongCA, true, []string{"starttls to " + s.URL, "certificate"}, 0},
		{"ldaps wrong ca", wrongCAs, true, []string{"connect to " + s.LDAPSURL, "certificate"}, 0},
		{"ldaps with starttls", bind(s.LDAPSURL, true), true, []string{"starttls to " + s.LDAPSURL}, 0},
		// slapd hangs up on a TLS hello: to the client, a server gone
		{"tls on the plain port", ldapconn.Target{URL: strings.Replace(s.URL, "ldap:", "ldaps:", 1), TLS: ca.ClientTLS()}, false, []string{"connect to"}, 0},
		{"unknown scheme", ldapconn.Target{URL: "http://127.0.0.1:1"}, true, []string{"unknown scheme"}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			nc, _, err := ldapconn.Open(context.Background(), c.target)
			if err == nil {
				nc.Close()
				t.Fatal("opened")
			}
			if fault.IsPermanent(err) != c.permanent || fault.IsRetryable(err) == c.permanent {
				t.Errorf("permanent %v retryable %v, want permanent %v: %v", fault.IsPermanent(err), fault.IsRetryable(err), c.permanent, err)
			}
			for _, w := range c.says {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if c.code != 0 && !ldap.IsErrorWithCode(err, c.code) {
				t.Errorf("error %v: want LDAP result %d", err, c.code)
			}
			if strings.Contains(err.Error(), c.target.BindPassword) && c.target.BindPassword != "" {
				t.Errorf("the password appears in the error: %v", err)
			}
		})
	}
}

// TestOpenEndsWithContext: a server that accepts the connection and never
// answers holds Open only until ctx is cancelled.
func TestOpenEndsWithContext(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent until the test ends
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, _, err = ldapconn.Open(ctx, ldapconn.Target{URL: "ldap://" + l.Addr().String(), BindDN: "cn=admin", BindPassword: "x"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Open against a silent server: %v, want the context's end", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Open returned after %s", d)
	}
}
