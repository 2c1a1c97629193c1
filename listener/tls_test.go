package listener_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/stream"
)

// TestTLS follows a directory over StartTLS and over LDAPS with the CA
// verified, and refuses a server whose certificate the CA did not sign.
func TestTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	slapd := testenv.StartSlapdWith(t, testenv.SlapdOptions{TLS: ca})
	slapd.AddUser(t, "tina", "tina@example.org", nil)
	other := testenv.NewCA(t) // a CA that did not sign slapd's certificate

	for _, c := range []struct {
		name     string
		url      string
		startTLS bool
		tls      *tls.Config
		ok       bool
	}{
		{"starttls", slapd.URL, true, ca.ClientTLS(), true},
		{"ldaps", slapd.LDAPSURL, false, ca.ClientTLS(), true},
		{"starttls-wrong-ca", slapd.URL, true, other.ClientTLS(), false},
		{"ldaps-wrong-ca", slapd.LDAPSURL, false, other.ClientTLS(), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			bus := testenv.StartNATS(t).Bus(t)
			logs := &testenv.LogBuffer{}
			log := zerolog.New(logs).Level(zerolog.DebugLevel)
			l := listener.New(listener.Config{URL: c.url, StartTLS: c.startTLS, TLS: c.tls,
				BindDN: slapd.AdminDN, BindPassword: slapd.AdminPW, BaseDN: slapd.BaseDN, MaxBackoff: 200 * time.Millisecond},
				bus, log, listener.Hooks{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- l.Run(ctx) }()
			defer func() { cancel(); <-done }()
			if c.ok {
				testenv.Eventually(t, 10*time.Second, func() error {
					if s := l.Status(); s.Published != 1 {
						return &statusErr{s}
					}
					return nil
				})
				entries, err := stream.LoadEntries(context.Background(), bus.Entries)
				if err != nil || len(entries) != 1 {
					t.Fatalf("entries over TLS: %v %v", entries, err)
				}
				for _, e := range entries {
					if e.Attrs.First(event.AttrPrimaryAddress) != "tina@example.org" {
						t.Fatalf("entry over TLS: %+v", e)
					}
				}
				return
			}
			testenv.Eventually(t, 10*time.Second, func() error {
				if s := l.Status(); !strings.Contains(s.LastError, "certificate") {
					return &statusErr{s}
				}
				return nil
			})
			if s := l.Status(); s.Published != 0 {
				t.Fatalf("published %d events from an unverified server", s.Published)
			}
			if strings.Contains(logs.String(), slapd.AdminPW) {
				t.Errorf("the bind password appears in the log")
			}
		})
	}
}

type statusErr struct{ s listener.Status }

func (e *statusErr) Error() string { return "listener status " + e.s.LastError }
