package registry

import (
	"strings"
	"testing"

	"mailsync/config"
)

func parse(t *testing.T, doc string) error {
	t.Helper()
	_, err := config.Parse([]byte("host: mx.example.org\nldap: {url: \"ldap://127.0.0.1\", base_dn: \"dc=example,dc=org\"}\n"+doc), t.TempDir(), Known{})
	return err
}

// TestConfigValidation: the config names only handlers the registry has,
// all of them by default, and each enabled handler's needs are checked,
// naming the key.
func TestConfigValidation(t *testing.T) {
	c, err := config.Parse([]byte("host: mx.example.org\nldap: {url: \"ldap://127.0.0.1\", base_dn: \"dc=example,dc=org\"}\ndovecot: {doveadm_url: \"http://127.0.0.1:1\"}\n"), t.TempDir(), Known{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(c.Handlers, ","), strings.Join(Known{}.Names(), ","); got != want || got == "" {
		t.Errorf("default handlers %q, want every handler %q", got, want)
	}
	if n := len(Enabled(c)); n != len(All()) {
		t.Errorf("%d handlers enabled by default, want %d", n, len(All()))
	}
	for _, tc := range []struct{ doc, key string }{
		{"handlers: [aliases, sieve]\n", "handlers[1]: unknown handler \"sieve\" (want aliases, mailbox or homeserver)"},
		{"handlers: [mailbox]\n", "dovecot.doveadm_url: required by the mailbox handler"},
		{"handlers: [aliases]\npolicy: {mail/dovecot/mailbox/move_on_homeserver_change: \"yes\"}\n", "policy.mail/dovecot/mailbox/move_on_homeserver_change: yes needs the mailbox handler"},
	} {
		if err := parse(t, tc.doc); err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: want %q, got %v", tc.doc, tc.key, err)
		}
	}
	if err := parse(t, "handlers: [aliases, homeserver]\n"); err != nil {
		t.Errorf("map handlers alone: %v", err)
	}
}

// TestEveryHandlerIsComplete: each handler has a unique name and all its
// parts, so the daemon and every verb can run it.
func TestEveryHandlerIsComplete(t *testing.T) {
	seen := map[string]bool{}
	for _, h := range All() {
		if h.Name == "" || seen[h.Name] {
			t.Errorf("handler name %q empty or used twice", h.Name)
		}
		seen[h.Name] = true
		if h.Build == nil || h.Check == nil || h.Plan == nil || h.Resync == nil {
			t.Errorf("%s: build %v, check %v, plan %v, resync %v: want all", h.Name, h.Build != nil, h.Check != nil, h.Plan != nil, h.Resync != nil)
		}
		if got, ok := Lookup(h.Name); !ok || got.Name != h.Name {
			t.Errorf("Lookup(%q) = %v, %v", h.Name, got.Name, ok)
		}
	}
}
