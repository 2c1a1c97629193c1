package testenv_test

import (
	"path/filepath"
	"testing"

	"mailsync/handlers/registry"
	"mailsync/internal/testenv"
)

// TestMailsyncConfigLoads: what the builder writes is a config mailsync
// loads, with the servers' settings, their secrets, what Set and Merge
// change and the builder's defaults.
func TestMailsyncConfigLoads(t *testing.T) {
	ldap := &testenv.Slapd{URL: "ldap://127.0.0.1:1", BaseDN: "dc=example,dc=org", AdminDN: "cn=admin,dc=example,dc=org", AdminPW: "pw"}
	dc := &testenv.Dovecot{DoveadmURL: "http://127.0.0.1:2/doveadm/v1", APIKey: "k3y", MailHome: "/srv/spool/%Ld/%Ln", UID: 8, GID: 12}
	c := testenv.NewMailsyncConfig(t, "").Handlers("mailbox", "aliases").Slapd(ldap).Dovecot(dc).
		Postfix(&testenv.Postfix{Postmap: "/usr/sbin/postmap", ConfigDir: "/srv/postfix"}, "").
		Set("listener.mass_delete_min", 7).
		Merge("nats:\n  replicas: 3\nlistener:\n  enabled: false\n").
		Policy("mail/dovecot/mailbox/delete", "yes")
	cfg, err := registry.Load(c.Write(""))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key       string
		got, want any
	}{
		{"host", cfg.Host, "mail.example.org"},
		{"state_dir", cfg.StateDir, filepath.Join(c.Dir(), "state")},
		{"ldap.bind_password_file", cfg.LDAP.BindPassword, "pw"},
		{"dovecot.api_key_file", cfg.Dovecot.APIKey, "k3y"},
		{"dovecot.owner", cfg.Dovecot.Owner, "8:12"},
		{"postfix.map_dir", cfg.Postfix.MapDir, filepath.Join(c.Dir(), "maps")},
		{"listener.mass_delete_min", cfg.Listener.MassDeleteMin, 7},
		{"listener.mass_delete_share (kept beside a merged key)", cfg.Listener.MassDeleteShare, 0.10},
		{"listener.enabled", cfg.Listener.Enabled, false},
		{"nats.replicas", cfg.NATS.Replicas, 3},
		{"policy delete", cfg.Policy.Delete, true},
		{"metrics.listen", cfg.Metrics.Listen, "off"},
		{"warnings", len(cfg.Warnings), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.key, tc.got, tc.want)
		}
	}
}
