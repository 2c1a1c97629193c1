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
	var errs Errors
	bad := func(key, format string, args ...any) { errs = append(errs, keyError(key, format, args...)) }
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	secret := func(key string, file *string, dst *string) {
		abs(file)
		if *file == "" {
			return
		}
		s, err := readSecret(*file)
		if err != nil {
			bad(key, "%v", err)
		}
		*dst = s
	}

	ucr := map[string]string{}
	if c.UCRFile != "" {
		abs(&c.UCRFile)
		m, err := ReadUCR(c.UCRFile)
		if err != nil {
			bad("ucr_file", "%v", err)
		}
		ucr = m
	}
	errs = append(errs, c.Policy.merge(ucr)...)

	if c.Host == "" && ucr["hostname"] != "" && ucr["domainname"] != "" {
		c.Host = ucr["hostname"] + "." + ucr["domainname"]
	}
	if c.Host == "" {
		if h, err := os.Hostname(); err == nil {
			c.Host = h
		}
	}
	// A host compares as a DNS name: lowercased, one trailing dot dropped
	// (package address), so "mail.example.org." here is the home server
	// "mail.example.org" and the other way round. Validate reports a bad one.
	if h, err := address.Host("host", strings.TrimSpace(c.Host)); err == nil {
		c.Host = h
	}
	abs(&c.StateDir)

	if c.LDAP.BindDN != "" && c.LDAP.BindPasswordFile == "" {
		bad("ldap.bind_password_file", "required with ldap.bind_dn")
	}
	secret("ldap.bind_password_file", &c.LDAP.BindPasswordFile, &c.LDAP.BindPassword)
	abs(&c.LDAP.CAFile)

	abs(&c.NATS.CAFile)
	for _, a := range []struct {
		key  string
		auth *NATSAuth
	}{{"nats.", &c.NATS.NATSAuth}, {"nats.admin.", &c.NATS.Admin}} {
		abs(&a.auth.CredentialsFile)
		abs(&a.auth.NkeySeedFile)
		if a.auth.User == "" {
			continue
		}
		if a.auth.PasswordFile == "" {
			bad(a.key+"password_file", "required with %suser", a.key)
			continue
		}
		secret(a.key+"password_file", &a.auth.PasswordFile, &a.auth.Password)
	}
	abs(&c.NATS.TLSCertFile)
	abs(&c.NATS.TLSKeyFile)

	if filepath.IsAbs(c.Dovecot.PublicHome) {
		c.Dovecot.PublicHome = filepath.Clean(c.Dovecot.PublicHome)
	}
	abs(&c.Dovecot.ConfDir)
	if c.Dovecot.UnitDropIn == "none" {
		c.Dovecot.UnitDropIn = ""
	}
	abs(&c.Dovecot.UnitDropIn)
	abs(&c.Dovecot.CAFile)
	secret("dovecot.api_key_file", &c.Dovecot.APIKeyFile, &c.Dovecot.APIKey)
	if c.Dovecot.MovingUserdb == "" {
		c.Dovecot.MovingUserdb = filepath.Join(c.StateDir, "moving.passwd")
	}
	abs(&c.Dovecot.MovingUserdb)

	peers := make(map[string]Peer, len(c.Peers))
	for host, p := range c.Peers {
		key := "peers." + host
		if p.APIKeyFile == "" {
			bad(key+".api_key_file", "required")
		}
		secret(key+".api_key_file", &p.APIKeyFile, &p.APIKey)
		h, err := address.Host(key, strings.TrimSpace(host))
		if err != nil {
			bad(key, "want a mail host's FQDN as the key: %v", err)
			h = host
		}
		peers[h] = p
	}
	c.Peers = peers

	for _, p := range []*string{&c.Postfix.MapDir, &c.Postfix.ConfigDir, &c.Postfix.QueueDir, &c.Postfix.DataDir,
		&c.Postfix.TLSCert, &c.Postfix.TLSKey, &c.Postfix.RelayAuthFile} {
		abs(p)
	}
	if c.Postfix.MainCFLocal == "" {
		c.Postfix.MainCFLocal = filepath.Join(c.Postfix.ConfigDir, "main.cf.local") // manual 14.7.7
	}

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
	return errs
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
