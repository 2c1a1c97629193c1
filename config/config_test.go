package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testHandlers stands for the handler registry: handlers a and b, where
// a needs dovecot.doveadm_url (package registry has the real ones).
type testHandlers struct{}

func (testHandlers) Names() []string { return []string{"a", "b"} }

func (testHandlers) Validate(c *Config) []error {
	var errs []error
	for i, h := range c.Handlers {
		if h != "a" && h != "b" {
			errs = append(errs, fmt.Errorf("handlers[%d]: unknown", i))
		}
	}
	if c.Wants("a") && c.Dovecot.DoveadmURL == "" {
		errs = append(errs, errors.New("dovecot.doveadm_url: required by a"))
	}
	return errs
}

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAndUCRFile(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "ldap.secret", "s3cret\n")
	write(t, dir, "base.conf", "hostname: mx1\ndomainname: Example.ORG\nmail/dovecot/mailbox/delete: yes\nmail/dovecot/mailbox/rename: no\nunrelated/key: x\n")
	p := write(t, dir, "mailsync.yaml", `
ucr_file: base.conf
ldap:
  url: ldap://127.0.0.1:389
  base_dn: dc=example,dc=org
  bind_dn: cn=admin,dc=example,dc=org
  bind_password_file: ldap.secret
dovecot:
  doveadm_url: http://127.0.0.1:8080/doveadm/v1
policy:
  mail/dovecot/mailbox/rename: "yes"
`)
	c, err := Load(p, testHandlers{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "mx1.example.org" {
		t.Errorf("host %q, want mx1.example.org from the UCR file", c.Host)
	}
	if !c.Policy.Delete {
		t.Errorf("delete should come from the UCR file")
	}
	if !c.Policy.Rename {
		t.Errorf("rename: the config file's policy must win over the UCR file")
	}
	if c.LDAP.BindPassword != "s3cret" {
		t.Errorf("bind password not read from its file")
	}
	if c.Policy.ExpansionLimit != 1000 || c.Postfix.MapType != "hash" || c.Dovecot.MailHome != "/var/spool/dovecot/private/%Ld/%Ln" {
		t.Errorf("defaults: %v %v %v", c.Policy.ExpansionLimit, c.Postfix.MapType, c.Dovecot.MailHome)
	}
	if c.Dovecot.PublicHome != "/var/spool/dovecot/public" {
		t.Errorf("dovecot.public_home default %q", c.Dovecot.PublicHome)
	}
}

func TestEveryErrorNamesItsKey(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "bad.yaml", `
host: "bad host"
handlers: [a, sieve]
ldap:
  url: http://x
  bind_dn: cn=x
dovecot:
  public_home: spool/public
postfix:
  map_type: btree
policy:
  mail/dovecot/mailbox/rename: perhaps
  mail/dovecot/unknown: yes
log:
  level: loud
`)
	_, err := Load(p, testHandlers{})
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, key := range []string{"host:", "handlers[1]:", "ldap.url:", "ldap.base_dn:", "ldap.bind_password_file:",
		"postfix.map_type:", "policy.mail/dovecot/mailbox/rename:", "policy.mail/dovecot/unknown:", "log.level:", "dovecot.public_home:"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s: %v", key, err)
		}
	}
}

func TestUnknownKeyRejected(t *testing.T) {
	_, err := Parse([]byte("ldap:\n  url: ldap://x\n  base_dn: dc=x\n  bindpw: oops\n"), t.TempDir(), testHandlers{})
	if err == nil || !strings.Contains(err.Error(), "bindpw") {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestMoveOnHomeChangePeers(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "b.key", "k3y\n")
	base := `
host: a.example.org
state_dir: /var/lib/mailsync
ldap: {url: "ldap://127.0.0.1", base_dn: "dc=example,dc=org"}
dovecot: {doveadm_url: "http://127.0.0.1:8080"}
policy: {mail/dovecot/mailbox/move_on_homeserver_change: "yes"}
`
	c, err := Parse([]byte(base+`
peers:
  B.example.org: {doveadm_url: "http://10.0.0.2:8080", doveadm_tcp: "10.0.0.2:12345", api_key_file: b.key}
`), dir, testHandlers{})
	if err != nil {
		t.Fatal(err)
	}
	p, ok := c.Peers["b.example.org"]
	if !c.Policy.MoveOnHomeChange || !ok || p.APIKey != "k3y" || c.Dovecot.MovingUserdb != "/var/lib/mailsync/moving.passwd" {
		t.Errorf("move on, peers %+v, moving userdb %q", c.Peers, c.Dovecot.MovingUserdb)
	}

	_, err = Parse([]byte(base), dir, testHandlers{})
	if err == nil || !strings.Contains(err.Error(), "peers: required") {
		t.Errorf("move on without peers: %v", err)
	}
	_, err = Parse([]byte(base+`
peers:
  a.example.org: {doveadm_url: "ftp://x", doveadm_tcp: "nohost", api_key_file: missing.key}
`), dir, testHandlers{})
	for _, key := range []string{"peers.a.example.org:", "peers.a.example.org.doveadm_url", "peers.a.example.org.doveadm_tcp", "peers.a.example.org.api_key_file"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("error %v does not name %s", err, key)
		}
	}
}

func TestMetricsListenLoopbackOnly(t *testing.T) {
	base := "ldap:\n  url: ldap://127.0.0.1:1\n  base_dn: dc=x\nhandlers: [b]\nmetrics:\n"
	for _, tc := range []struct {
		metrics string
		ok      bool
	}{
		{"  listen: 127.0.0.1:9154\n", true},
		{"  listen: '[::1]:9154'\n", true},
		{"  listen: localhost:9154\n", true},
		{"  listen: 'off'\n", true},
		{"  listen: 0.0.0.0:9154\n", false},
		{"  listen: ':9154'\n", false},
		{"  listen: 192.0.2.7:9154\n", false},
		{"  listen: '[::]:9154'\n", false},
		{"  listen: 0.0.0.0:9154\n  allow_remote: true\n", true},
	} {
		_, err := Parse([]byte(base+tc.metrics), t.TempDir(), testHandlers{})
		switch {
		case tc.ok && err != nil:
			t.Errorf("%q refused: %v", tc.metrics, err)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), "metrics.listen:") || !strings.Contains(err.Error(), "metrics.allow_remote")):
			t.Errorf("%q: want an error naming metrics.listen and metrics.allow_remote, got %v", tc.metrics, err)
		}
	}
}

// TestHostsAreDNSNames: host and the peers compare as DNS names, so a
// trailing dot or another case is the same host.
func TestHostsAreDNSNames(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "b.key", "k3y\n")
	base := `
host: A.Example.ORG.
state_dir: /var/lib/mailsync
ldap: {url: "ldap://127.0.0.1", base_dn: "dc=example,dc=org"}
dovecot: {doveadm_url: "http://127.0.0.1:8080"}
policy: {mail/dovecot/mailbox/move_on_homeserver_change: "yes"}
`
	c, err := Parse([]byte(base+`
peers:
  B.example.org.: {doveadm_url: "http://10.0.0.2:8080", doveadm_tcp: "10.0.0.2:12345", api_key_file: b.key}
`), dir, testHandlers{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Peers["b.example.org"]; c.Host != "a.example.org" || !ok {
		t.Errorf("host %q, peers %v; want a.example.org and b.example.org", c.Host, c.Peers)
	}
	_, err = Parse([]byte(base+`
peers:
  a.example.org: {doveadm_url: "http://10.0.0.2:8080", doveadm_tcp: "10.0.0.2:12345", api_key_file: b.key}
`), dir, testHandlers{})
	if err == nil || !strings.Contains(err.Error(), "is this host") {
		t.Errorf("peer naming this host without the dot: %v", err)
	}
	_, err = Parse([]byte(strings.Replace(base, "A.Example.ORG.", "a.example.org..", 1)+`
peers:
  b.example.org: {doveadm_url: "http://10.0.0.2:8080", doveadm_tcp: "10.0.0.2:12345", api_key_file: b.key}
`), dir, testHandlers{})
	if err == nil || !strings.Contains(err.Error(), "host:") {
		t.Errorf("host with two trailing dots: %v", err)
	}
}

// TestRemovedKeysWarn: the keys older releases read and never used load
// with a warning naming each, and the master password file is no longer
// read (it does not even exist here).
func TestRemovedKeysWarn(t *testing.T) {
	c, err := Parse([]byte(`
host: mx.example.org
ldap: {url: "ldap://127.0.0.1", base_dn: "dc=example,dc=org"}
nats: {port: 4222}
dovecot:
  doveadm_url: http://127.0.0.1:8080
  imap_addr: 127.0.0.1:143
  master_user: dovecotadmin
  master_password_file: /nonexistent/master.secret
`), t.TempDir(), testHandlers{})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(c.Warnings, "\n")
	for _, key := range []string{"nats.port:", "dovecot.imap_addr:", "dovecot.master_user:", "dovecot.master_password_file:"} {
		if !strings.Contains(all, key) {
			t.Errorf("no warning names %s: %q", key, c.Warnings)
		}
	}
	if len(c.Warnings) != 4 {
		t.Errorf("want 4 warnings, got %q", c.Warnings)
	}
	c, err = Parse([]byte(`
host: mx.example.org
ldap: {url: "ldap://127.0.0.1", base_dn: "dc=example,dc=org"}
dovecot: {doveadm_url: "http://127.0.0.1:8080"}
`), t.TempDir(), testHandlers{})
	if err != nil || len(c.Warnings) != 0 {
		t.Errorf("a config without removed keys: %v, warnings %q", err, c.Warnings)
	}
}

// TestDecodeOverDefaults: the file is decoded over Defaults, so a false or
// a zero it gives is kept, keys it leaves out keep their defaults, and the
// defaults that follow from other settings follow the file's values.
func TestDecodeOverDefaults(t *testing.T) {
	dir := t.TempDir()
	c, err := Parse([]byte(`
host: mx.example.org
state_dir: st
handlers: [b]
ldap: {url: "ldap://127.0.0.1", base_dn: "dc=example,dc=org"}
listener: {enabled: false, mass_delete_min: 5}
postfix: {config_dir: /srv/postfix, coalesce: 0s}
dovecot: {unit_dropin: none}
`), dir, testHandlers{})
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults(testHandlers{})
	for _, tc := range []struct {
		key       string
		got, want any
	}{
		{"listener.enabled", c.Listener.Enabled, false},
		{"listener.mass_delete_min", c.Listener.MassDeleteMin, 5},
		{"listener.mass_delete_share", c.Listener.MassDeleteShare, want.Listener.MassDeleteShare},
		{"postfix.coalesce", c.Postfix.Coalesce, time.Duration(0)},
		{"postfix.map_type", c.Postfix.MapType, DefaultMapType},
		{"state_dir", c.StateDir, filepath.Join(dir, "st")},
		{"dovecot.moving_userdb", c.Dovecot.MovingUserdb, filepath.Join(dir, "st", "moving.passwd")},
		{"postfix.main_cf_local", c.Postfix.MainCFLocal, "/srv/postfix/main.cf.local"},
		{"dovecot.unit_dropin", c.Dovecot.UnitDropIn, ""},
		{"handlers", strings.Join(c.Handlers, ","), "b"},
		{"default handlers", strings.Join(want.Handlers, ","), "a,b"},
		{"policy expansion limit", c.Policy.ExpansionLimit, DefaultExpansionLimit},
		{"policy rename", c.Policy.Rename, true},
		{"policy spam folder", c.Policy.FolderSpam, "Spam"},
		{"policy settings", c.Policy.Settings[KeyDelete], "no"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.key, tc.got, tc.want)
		}
	}
}

// TestValidateNamesKey: Validate alone (no file, no file system) checks a
// config built in code, naming the key of each bad value.
func TestValidateNamesKey(t *testing.T) {
	good := func() *Config {
		c := Defaults(testHandlers{})
		c.Host, c.LDAP.URL, c.LDAP.BaseDN = "mx.example.org", "ldap://127.0.0.1", "dc=example,dc=org"
		return c
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("defaults with the required keys: %v", err)
	}
	for key, spoil := range map[string]func(*Config){
		"ldap.flavor:":                func(c *Config) { c.LDAP.Flavor = "ad" },
		"listener.mass_delete_share:": func(c *Config) { c.Listener.MassDeleteShare = 0 },
		"listener.mass_delete_min:":   func(c *Config) { c.Listener.MassDeleteMin = 0 },
		"nats.replicas:":              func(c *Config) { c.NATS.Replicas = 0 },
		"postfix.coalesce:":           func(c *Config) { c.Postfix.Coalesce = -time.Second },
		"dovecot.mail_home:":          func(c *Config) { c.Dovecot.MailHome = "relative/%Ln" },
		"log.format:":                 func(c *Config) { c.Log.Format = "xml" },
		"state_dir:":                  func(c *Config) { c.StateDir = "" },
		"configure[0]:":               func(c *Config) { c.Configure = []string{"exim"} },
	} {
		c := good()
		spoil(c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("want an error naming %s, got %v", key, err)
		}
	}
}
