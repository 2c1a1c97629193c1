package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"mailsync/address"
)

// Handlers is what loading the config needs of the handler registry: the
// names of the handlers there are (all of them run by default) and a check
// of the settings the enabled ones need, each error naming its key.
type Handlers interface {
	Names() []string
	Validate(c *Config) []error
}

// Load reads, defaults and validates the config file at path.
func Load(path string, hs Handlers) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, filepath.Dir(path), hs)
}

// Parse decodes a config document over Defaults, resolves it (relative
// file names against dir, the UCR file, the policy, the secrets, the
// defaults that follow from other settings) and validates it.
func Parse(data []byte, dir string, hs Handlers) (*Config, error) {
	c := Defaults(hs)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config: %w", err)
	}
	c.handlers = hs
	errs := c.resolve(dir)
	if err := c.Validate(); err != nil {
		errs = append(errs, err.(Errors)...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// Errors collects every validation error, each naming its key.
type Errors []error

func (e Errors) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return "invalid config: " + strings.Join(s, "; ")
}

// keyError is one error naming its key.
func keyError(key, format string, args ...any) error {
	return fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...))
}

// Removed is a key mailsync no longer reads. A file from an older release
// may still set it and loads; Parse then adds a warning naming the key
// (Config.Warnings), which `mailsync run` logs.
type Removed struct{ Set bool }

// UnmarshalYAML notes that the key is set.
func (r *Removed) UnmarshalYAML(*yaml.Node) error {
	r.Set = true
	return nil
}

// resolve does what needs the file system or follows from other settings:
// relative paths, the UCR file, the merged policy, the secrets, the
// derived defaults and the removed keys' warnings.
func (c *Config) resolve(dir string) Errors {
	r := &resolver{dir: dir}
	ucr := r.ucr(c)
	r.errs = append(r.errs, c.Policy.merge(ucr)...)
	r.host(c, ucr)
	r.ldap(&c.LDAP)
	r.nats(&c.NATS)
	r.dovecot(&c.Dovecot, c.StateDir)
	r.peers(c)
	r.postfix(&c.Postfix)
	c.warnRemoved()
	return r.errs
}

// resolver resolves file names against the config's directory, reads
// secrets, and gathers the errors, each naming its key.
type resolver struct {
	dir  string
	errs Errors
}

func (r *resolver) bad(key, format string, args ...any) {
	r.errs = append(r.errs, keyError(key, format, args...))
}

// abs makes a relative file name relative to the config's directory.
func (r *resolver) abs(ps ...*string) {
	for _, p := range ps {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(r.dir, *p)
		}
	}
}

// secret reads the secret in file (the setting key) into dst.
func (r *resolver) secret(key string, file, dst *string) {
	r.abs(file)
	if *file == "" {
		return
	}
	s, err := readSecret(*file)
	if err != nil {
		r.bad(key, "%v", err)
	}
	*dst = s
}

func (r *resolver) ucr(c *Config) map[string]string {
	if c.UCRFile == "" {
		return map[string]string{}
	}
	r.abs(&c.UCRFile)
	m, err := ReadUCR(c.UCRFile)
	if err != nil {
		r.bad("ucr_file", "%v", err)
	}
	return m
}

// host fills in the host's FQDN (UCR's hostname.domainname, else the
// system's host name) and the state dir. A host compares as a DNS name:
// lowercased, one trailing dot dropped (package address), so
// "mail.example.org." here is the home server "mail.example.org" and the
// other way round. Validate reports a bad one.
func (r *resolver) host(c *Config, ucr map[string]string) {
	if c.Host == "" && ucr["hostname"] != "" && ucr["domainname"] != "" {
		c.Host = ucr["hostname"] + "." + ucr["domainname"]
	}
	if c.Host == "" {
		if h, err := os.Hostname(); err == nil {
			c.Host = h
		}
	}
	if h, err := address.Host("host", strings.TrimSpace(c.Host)); err == nil {
		c.Host = h
	}
	r.abs(&c.StateDir)
}

func (r *resolver) ldap(l *LDAP) {
	if l.BindDN != "" && l.BindPasswordFile == "" {
		r.bad("ldap.bind_password_file", "required with ldap.bind_dn")
	}
	r.secret("ldap.bind_password_file", &l.BindPasswordFile, &l.BindPassword)
	r.abs(&l.CAFile)
}

func (r *resolver) nats(n *NATS) {
	r.abs(&n.CAFile, &n.TLSCertFile, &n.TLSKeyFile)
	for _, a := range []struct {
		key  string
		auth *NATSAuth
	}{{"nats.", &n.NATSAuth}, {"nats.admin.", &n.Admin}} {
		r.abs(&a.auth.CredentialsFile, &a.auth.NkeySeedFile)
		if a.auth.User == "" {
			continue
		}
		if a.auth.PasswordFile == "" {
			r.bad(a.key+"password_file", "required with %suser", a.key)
			continue
		}
		r.secret(a.key+"password_file", &a.auth.PasswordFile, &a.auth.Password)
	}
}

func (r *resolver) dovecot(d *Dovecot, stateDir string) {
	if filepath.IsAbs(d.PublicHome) {
		d.PublicHome = filepath.Clean(d.PublicHome)
	}
	if d.UnitDropIn == "none" {
		d.UnitDropIn = ""
	}
	if d.MovingUserdb == "" {
		d.MovingUserdb = filepath.Join(stateDir, "moving.passwd")
	}
	r.abs(&d.ConfDir, &d.UnitDropIn, &d.CAFile, &d.MovingUserdb)
	r.secret("dovecot.api_key_file", &d.APIKeyFile, &d.APIKey)
}

// peers reads the peers' keys and names them by their canonical FQDN.
func (r *resolver) peers(c *Config) {
	peers := make(map[string]Peer, len(c.Peers))
	for host, p := range c.Peers {
		key := "peers." + host
		if p.APIKeyFile == "" {
			r.bad(key+".api_key_file", "required")
		}
		r.secret(key+".api_key_file", &p.APIKeyFile, &p.APIKey)
		h, err := address.Host(key, strings.TrimSpace(host))
		if err != nil {
			r.bad(key, "want a mail host's FQDN as the key: %v", err)
			h = host
		}
		peers[h] = p
	}
	c.Peers = peers
}

func (r *resolver) postfix(p *Postfix) {
	r.abs(&p.MapDir, &p.ConfigDir, &p.QueueDir, &p.DataDir, &p.TLSCert, &p.TLSKey, &p.RelayAuthFile)
	if p.MainCFLocal == "" {
		p.MainCFLocal = filepath.Join(p.ConfigDir, "main.cf.local") // manual 14.7.7
	}
}

// warnRemoved adds a warning for each removed key the file sets.
func (c *Config) warnRemoved() {
	for _, r := range []struct {
		key string
		set bool
		why string
	}{
		{"dovecot.imap_addr", c.Dovecot.IMAPAddr.Set, "mailsync never connects to IMAP"},
		{"dovecot.master_user", c.Dovecot.MasterUser.Set, "mailsync never logs in as Dovecot's master user"},
		{"dovecot.master_password_file", c.Dovecot.MasterPasswordFile.Set, "mailsync never logs in as Dovecot's master user, and no longer reads the file"},
		{"nats.port", c.NATS.Port.Set, "the embedded server has no network listener unless nats.listen is set"},
	} {
		if r.set {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s: no longer read and ignored (%s); remove it from the config file", r.key, r.why))
		}
	}
}

// parseBool reads UCR truth values (univention.config_registry's is_true).
func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "yes", "true", "1", "enable", "enabled", "on":
		return true, nil
	case "no", "false", "0", "disable", "disabled", "off", "":
		return false, nil
	}
	return false, fmt.Errorf("want yes or no, got %q", v)
}

func readSecret(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret: %w", err)
	}
	s := strings.TrimRight(string(data), "\r\n")
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return s, nil
}

// ReadUCR reads `ucr dump` output: one "key: value" per line.
func ReadUCR(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read ucr file: %w", err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want \"key: value\", got %q", path, n, line)
		}
		m[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return m, sc.Err()
}
