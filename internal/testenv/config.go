package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// MailsyncConfig builds the config file of a mailsync under test (the
// binary, or `run` in the test process): every test writes it here, so a
// renamed or removed key changes one place. The defaults are what a test
// wants unless it says otherwise: host mail.example.org, the state dir in
// the config's dir, metrics off, JSON logs at debug. The servers' parts
// (Slapd, Dovecot, Postfix) write their secrets beside the file; Set adds
// or replaces any other key.
type MailsyncConfig struct {
	t   testing.TB
	dir string
	doc map[string]any
}

// NewMailsyncConfig starts a config whose file, secrets and state dir live
// in dir (a new temp dir when empty).
func NewMailsyncConfig(t testing.TB, dir string) *MailsyncConfig {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	c := &MailsyncConfig{t: t, dir: dir, doc: map[string]any{}}
	c.Set("host", "mail.example.org")
	c.Set("state_dir", filepath.Join(dir, "state"))
	c.Set("metrics.listen", "off")
	c.Set("log.level", "debug")
	c.Set("log.format", "json")
	return c
}

// Dir is where the file, its secrets and the state dir are.
func (c *MailsyncConfig) Dir() string { return c.dir }

// Set sets the key at a dotted path ("listener.mass_delete_min") to v; a
// key holding dots itself (a policy key, a peer's FQDN) goes in a map
// value of its parent ("policy", map[string]any{...}), merged with what is
// there.
func (c *MailsyncConfig) Set(path string, v any) *MailsyncConfig {
	keys := strings.Split(path, ".")
	m := c.doc
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	merge(m, map[string]any{keys[len(keys)-1]: v})
	return c
}

// Merge merges a YAML document into the config, key by key (a mapping
// into a mapping, anything else replacing what is there): for the
// sections a test writes as text.
func (c *MailsyncConfig) Merge(doc string) *MailsyncConfig {
	c.t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		c.t.Fatalf("mailsync config: merge %q: %v", doc, err)
	}
	merge(c.doc, m)
	return c
}

func merge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// Policy sets UCR policy settings (the policy section).
func (c *MailsyncConfig) Policy(kv ...string) *MailsyncConfig {
	m := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return c.Set("policy", m)
}

// Handlers sets the handlers the config enables.
func (c *MailsyncConfig) Handlers(h ...string) *MailsyncConfig { return c.Set("handlers", h) }

// Slapd points the listener at s, bound as its admin.
func (c *MailsyncConfig) Slapd(s *Slapd) *MailsyncConfig {
	return c.LDAP(s.URL, s.BaseDN, s.AdminDN, s.AdminPW)
}

// LDAP points the listener at a directory, bound as bindDN with password.
func (c *MailsyncConfig) LDAP(url, baseDN, bindDN, password string) *MailsyncConfig {
	c.Set("ldap.url", url)
	c.Set("ldap.base_dn", baseDN)
	if bindDN != "" {
		c.Set("ldap.bind_dn", bindDN)
		c.Set("ldap.bind_password_file", c.Secret("ldap.secret", password))
	}
	return c
}

// Dovecot has the mailbox handler drive d: its doveadm API and key, its
// mail_home, and its mail files' owner.
func (c *MailsyncConfig) Dovecot(d *Dovecot) *MailsyncConfig {
	c.Set("dovecot.doveadm_url", d.DoveadmURL)
	c.Set("dovecot.api_key_file", c.Secret("api.key", d.APIKey))
	c.Set("dovecot.mail_home", d.MailHome)
	c.Set("dovecot.owner", fmt.Sprintf("%d:%d", d.UID, d.GID))
	return c
}

// Postfix has the map handlers write to mapDir (empty: <dir>/maps) with
// p's postmap and config dir.
func (c *MailsyncConfig) Postfix(p *Postfix, mapDir string) *MailsyncConfig {
	if mapDir == "" {
		mapDir = filepath.Join(c.dir, "maps")
	}
	c.Set("postfix.map_dir", mapDir)
	c.Set("postfix.config_dir", p.ConfigDir)
	c.Set("postfix.postmap", p.Postmap)
	return c
}

// Secret writes a secret file beside the config and returns its path (for
// the keys the builder has no method for, too).
func (c *MailsyncConfig) Secret(name, value string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(value+"\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// YAML is the config document.
func (c *MailsyncConfig) YAML() []byte {
	c.t.Helper()
	data, err := yaml.Marshal(c.doc)
	if err != nil {
		c.t.Fatalf("mailsync config: %v", err)
	}
	return data
}

// Write writes the config file as name (empty: mailsync.yaml) in Dir and
// returns its path; writing again after Set gives another variant.
func (c *MailsyncConfig) Write(name string) string {
	c.t.Helper()
	if name == "" {
		name = "mailsync.yaml"
	}
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, c.YAML(), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}
