package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "mx1.example.org" {
		t.Errorf("host %q, want mx1.example.org from the UCR file", c.Host)
	}
	if !c.Bool(KeyDelete) {
		t.Errorf("delete should come from the UCR file")
	}
	if !c.Bool(KeyRename) {
		t.Errorf("rename: the config file's policy must win over the UCR file")
	}
	if c.LDAP.BindPassword != "s3cret" {
		t.Errorf("bind password not read from its file")
	}
	if c.Int(KeyExpansionLimit) != 1000 || c.Postfix.MapType != "hash" || c.Dovecot.MailHome != "/var/spool/dovecot/private/%Ld/%Ln" {
		t.Errorf("defaults: %v %v %v", c.Int(KeyExpansionLimit), c.Postfix.MapType, c.Dovecot.MailHome)
	}
	if c.Dovecot.PublicHome != "/var/spool/dovecot/public" {
		t.Errorf("dovecot.public_home default %q", c.Dovecot.PublicHome)
	}
}

func TestEveryErrorNamesItsKey(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "bad.yaml", `
host: "bad host"
handlers: [mailbox, sieve]
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
	_, err := Load(p)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, key := range []string{"host:", "handlers[1]:", "ldap.url:", "ldap.base_dn:", "ldap.bind_password_file:",
		"postfix.map_type:", "policy.mail/dovecot/mailbox/rename:", "policy.mail/dovecot/unknown:", "log.level:", "dovecot.doveadm_url:", "dovecot.public_home:"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s: %v", key, err)
		}
	}
}

func TestUnknownKeyRejected(t *testing.T) {
	_, err := Parse([]byte("ldap:\n  url: ldap://x\n  base_dn: dc=x\n  bindpw: oops\n"), t.TempDir())
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
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := c.Peers["b.example.org"]
	if !c.Bool(KeyMoveOnHomeChange) || !ok || p.APIKey != "k3y" || c.Dovecot.MovingUserdb != "/var/lib/mailsync/moving.passwd" {
		t.Errorf("move on, peers %+v, moving userdb %q", c.Peers, c.Dovecot.MovingUserdb)
	}

	_, err = Parse([]byte(base), dir)
	if err == nil || !strings.Contains(err.Error(), "peers: required") {
		t.Errorf("move on without peers: %v", err)
	}
	_, err = Parse([]byte(base+`
peers:
  a.example.org: {doveadm_url: "ftp://x", doveadm_tcp: "nohost", api_key_file: missing.key}
`), dir)
	for _, key := range []string{"peers.a.example.org:", "peers.a.example.org.doveadm_url", "peers.a.example.org.doveadm_tcp", "peers.a.example.org.api_key_file"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("error %v does not name %s", err, key)
		}
	}
}

func TestMetricsListenLoopbackOnly(t *testing.T) {
	base := "ldap:\n  url: ldap://127.0.0.1:1\n  base_dn: dc=x\nhandlers: [aliases]\nmetrics:\n"
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
		_, err := Parse([]byte(base+tc.metrics), t.TempDir())
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
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Peers["b.example.org"]; c.Host != "a.example.org" || !ok {
		t.Errorf("host %q, peers %v; want a.example.org and b.example.org", c.Host, c.Peers)
	}
	_, err = Parse([]byte(base+`
peers:
  a.example.org: {doveadm_url: "http://10.0.0.2:8080", doveadm_tcp: "10.0.0.2:12345", api_key_file: b.key}
`), dir)
	if err == nil || !strings.Contains(err.Error(), "is this host") {
		t.Errorf("peer naming this host without the dot: %v", err)
	}
	_, err = Parse([]byte(strings.Replace(base, "A.Example.ORG.", "a.example.org..", 1)+`
peers:
  b.example.org: {doveadm_url: "http://10.0.0.2:8080", doveadm_tcp: "10.0.0.2:12345", api_key_file: b.key}
`), dir)
	if err == nil || !strings.Contains(err.Error(), "host:") {
		t.Errorf("host with two trailing dots: %v", err)
	}
}
