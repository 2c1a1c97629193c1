package dovecotadm_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"mailsync/dovecotadm"
	"mailsync/internal/testenv"
)

// TestDoveadmOverHTTPS drives Dovecot's doveadm API over HTTPS with the
// server verified against a throwaway CA, and refuses a server the CA did
// not sign.
func TestDoveadmOverHTTPS(t *testing.T) {
	ca := testenv.NewCA(t)
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "tls", "tls@example.org", nil)
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{DoveadmTLS: ca})
	if !strings.HasPrefix(dc.DoveadmURL, "https://") {
		t.Fatalf("doveadm URL %s is not https", dc.DoveadmURL)
	}
	trusted := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.ClientTLS()}}
	c, err := dovecotadm.New(dc.DoveadmURL, dc.APIKey, dovecotadm.WithHTTPClient(trusted))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateMailbox(context.Background(), "tls@example.org", "INBOX", "Spam"); err != nil {
		t.Fatalf("create mailbox over https: %v", err)
	}
	boxes, err := c.ListMailboxes(context.Background(), "tls@example.org")
	if err != nil || len(boxes) != 2 {
		t.Fatalf("list mailboxes over https: %v %v", boxes, err)
	}
	other := testenv.NewCA(t)
	untrusted := &http.Client{Transport: &http.Transport{TLSClientConfig: other.ClientTLS()}}
	c2, _ := dovecotadm.New(dc.DoveadmURL, dc.APIKey, dovecotadm.WithHTTPClient(untrusted))
	err = c2.Kick(context.Background(), "tls@example.org")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a server the CA did not sign was accepted: %v", err)
	}
	if strings.Contains(err.Error(), dc.APIKey) {
		t.Errorf("the API key appears in the error: %v", err)
	}
}
