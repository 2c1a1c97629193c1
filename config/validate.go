package config

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"

	"mailsync/address"
)

// Validate checks every setting of a resolved config, without touching
// the file system: each error names its key. The handler registry checks
// the handler names and what the enabled handlers need.
func (c *Config) Validate() error {
	var errs Errors
	for _, check := range []func() Errors{c.validateTop, c.LDAP.validate, c.Listener.validate, c.NATS.validate,
		c.Dovecot.validate, c.validatePeers, c.Postfix.validate, c.Metrics.validate, c.Log.validate} {
		errs = append(errs, check()...)
	}
	if c.handlers != nil {
		errs = append(errs, c.handlers.Validate(c)...)
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// Wants reports whether handler h is enabled.
func (c *Config) Wants(h string) bool { return slices.Contains(c.Handlers, h) }

// errorList gathers errors naming their keys.
type errorList struct{ Errors }

func (l *errorList) bad(key, format string, args ...any) {
	l.Errors = append(l.Errors, keyError(key, format, args...))
}

// oneOf checks that v is one of want.
func (l *errorList) oneOf(key, v string, want ...string) {
	if !slices.Contains(want, v) {
		l.bad(key, "want %s, got %q", orList(want), v)
	}
}

func orList(w []string) string {
	if len(w) == 1 {
		return w[0]
	}
	return strings.Join(w[:len(w)-1], ", ") + " or " + w[len(w)-1]
}

func (c *Config) validateTop() Errors {
	var l errorList
	if _, err := address.Host("host", strings.TrimSpace(c.Host)); err != nil {
		l.bad("host", "want this mail host's FQDN: %v", err)
	}
	if c.StateDir == "" {
		l.bad("state_dir", "required")
	}
	for i, p := range c.Configure {
		if p != "postfix" && p != "dovecot" {
			l.bad(fmt.Sprintf("configure[%d]", i), "unknown server %q (want postfix, dovecot)", p)
		}
	}
	return l.Errors
}

func (d LDAP) validate() Errors {
	var l errorList
	if d.URL == "" {
		l.bad("ldap.url", "required")
	} else if u, err := url.Parse(d.URL); err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") {
		l.bad("ldap.url", "want ldap:// or ldaps://, got %q", d.URL)
	}
	if d.BaseDN == "" {
		l.bad("ldap.base_dn", "required")
	}
	l.oneOf("ldap.flavor", d.Flavor, Flavors()...)
	return l.Errors
}

func (s Listener) validate() Errors {
	var l errorList
	if s.MassDeleteShare <= 0 || s.MassDeleteShare > 1 {
		l.bad("listener.mass_delete_share", "want a share above 0 and at most 1, got %v", s.MassDeleteShare)
	}
	if s.MassDeleteMin < 1 {
		l.bad("listener.mass_delete_min", "want at least 1, got %d", s.MassDeleteMin)
	}
	return l.Errors
}

func (n NATS) validate() Errors {
	var l errorList
	if n.Replicas < 1 {
		l.bad("nats.replicas", "want at least 1, got %d", n.Replicas)
	}
	if n.Listen != "" {
		if n.URL != "" {
			l.bad("nats.listen", "is for the embedded server; nats.url names an external one")
		} else if _, _, err := net.SplitHostPort(n.Listen); err != nil {
			l.bad("nats.listen", "want host:port, got %q", n.Listen)
		}
		if n.TLSCertFile == "" || n.TLSKeyFile == "" {
			l.bad("nats.tls_cert_file", "nats.listen needs TLS: set nats.tls_cert_file and nats.tls_key_file")
		}
	}
	return l.Errors
}

func (d Dovecot) validate() Errors {
	var l errorList
	if !strings.Contains(d.MailHome, "%Ln") || !filepath.IsAbs(d.MailHome) {
		l.bad("dovecot.mail_home", "want an absolute template with %%Ln (and %%Ld), got %q", d.MailHome)
	}
	if !filepath.IsAbs(d.PublicHome) || filepath.Clean(d.PublicHome) == "/" {
		l.bad("dovecot.public_home", "want an absolute directory below /, got %q", d.PublicHome)
	}
	return l.Errors
}

func (c *Config) validatePeers() Errors {
	var l errorList
	for _, host := range slices.Sorted(maps.Keys(c.Peers)) {
		p, key := c.Peers[host], "peers."+host
		if host == c.Host {
			l.bad(key, "is this host (host)")
		}
		if u, err := url.Parse(p.DoveadmURL); p.DoveadmURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			l.bad(key+".doveadm_url", "want http(s)://host:port, got %q", p.DoveadmURL)
		}
		if _, port, err := net.SplitHostPort(p.DoveadmTCP); err != nil || port == "" {
			l.bad(key+".doveadm_tcp", "want host:port of its doveadm server, got %q", p.DoveadmTCP)
		}
	}
	if c.Policy.MoveOnHomeChange && len(c.Peers) == 0 {
		l.bad("peers", "required with policy.%s=yes: the mail hosts mail may move to", KeyMoveOnHomeChange)
	}
	return l.Errors
}

func (p Postfix) validate() Errors {
	var l errorList
	l.oneOf("postfix.map_type", p.MapType, "hash", "lmdb", "cdb")
	if p.Coalesce < 0 {
		l.bad("postfix.coalesce", "want a duration of 0 or more, got %s", p.Coalesce)
	}
	return l.Errors
}

func (m Metrics) validate() Errors {
	var l errorList
	if m.Listen == "off" {
		return nil
	}
	if host, _, err := net.SplitHostPort(m.Listen); err != nil {
		l.bad("metrics.listen", "want host:port or off, got %q", m.Listen)
	} else if !m.AllowRemote && !isLoopback(host) {
		l.bad("metrics.listen", "%q is reachable from other hosts; use a loopback address (127.0.0.1:9154) or set metrics.allow_remote: true", m.Listen)
	}
	return l.Errors
}

func (g Log) validate() Errors {
	var l errorList
	if !slices.Contains([]string{"trace", "debug", "info", "warn", "error"}, g.Level) {
		l.bad("log.level", "want debug, info, warn or error, got %q", g.Level)
	}
	l.oneOf("log.format", g.Format, "auto", "json", "console")
	return l.Errors
}

// isLoopback tells whether a listen host reaches this host alone: localhost
// or a loopback IP. An empty host listens on every interface.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
