// Package config loads mailsync's one configuration file, fills in the
// defaults (each with where it comes from), reads secrets from files, and
// validates every setting, naming the key of each error.
//
// Policy settings carry UCS's UCR names (mail/dovecot/mailbox/rename, ...) so
// an administrator recognises them; a `ucr dump`-style file ("key: value"
// lines) may be named with ucr_file, and its values apply unless the config
// file's policy section sets the same key.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"mailsync/address"
)

// UCR policy keys mailsync reads.
const (
	KeyRename           = "mail/dovecot/mailbox/rename"
	KeyDelete           = "mail/dovecot/mailbox/delete"
	KeySeparateIndex    = "mail/dovecot/location/separate_index"
	KeyMoveOnHomeChange = "mail/dovecot/mailbox/move_on_homeserver_change"
	KeyFolderSpam       = "mail/dovecot/folder/spam"
	KeyFolderHam        = "mail/dovecot/folder/ham"
	KeyExpansionLimit   = "virtual_alias_expansion_limit"
)

// policyDefaults are the policy values when neither the config file nor the
// UCR file sets them.
var policyDefaults = map[string]string{
	// The manual (14.7.7) says rename is the standard setting since UCS 3.0;
	// UCS's code defaults to no (reference §1.4). mailsync follows the manual.
	KeyRename: "yes",
	// UCS: not set, treated as false (reference §5.1).
	KeyDelete:        "no",
	KeySeparateIndex: "no",
	// Beyond UCS (manual 14.7.10: mail data is not moved): off by default.
	KeyMoveOnHomeChange: "no",
	// UCS postinst defaults (reference §5.1).
	KeyFolderSpam: "Spam",
	KeyFolderHam:  "Ham",
	// Postfix's virtual_alias_expansion_limit default (reference §3.4).
	KeyExpansionLimit: "1000",
}

// Settings package mailconf renders the servers' configuration from (manual
// 14.7.1-14.7.7, reference §5.2). They have no defaults here: the renderer
// knows the server's own default and checks each value, naming its key.
var mailconfKeys = append([]string{"mail/relayhost", "mail/relayauth", "mail/messagesizelimit", "mail/archivefolder"},
	DovecotConfKeys...)

// DovecotConfKeys are the Dovecot settings (manual 14.7.11–14.7.12,
// reference §5.1): the limits UCS's 10-master.conf reads and the NFS
// settings. Unset, the renderer writes UCS's defaults or leaves Dovecot's.
var DovecotConfKeys = []string{
	"mail/dovecot/limits/default_process_limit",
	"mail/dovecot/limits/default_client_limit",
	"mail/dovecot/limits/default_vsz_limit",
	"mail/dovecot/limits/imap-login/service_count",
	"mail/dovecot/limits/imap-login/process_min_avail",
	"mail/dovecot/limits/imap-login/client_limit",
	"mail/dovecot/limits/imap-login/vsz_limit",
	"mail/dovecot/limits/pop3-login/service_count",
	"mail/dovecot/limits/pop3-login/process_min_avail",
	"mail/dovecot/limits/pop3-login/client_limit",
	"mail/dovecot/limits/pop3-login/vsz_limit",
	"mail/dovecot/limits/imap/process_limit",
	"mail/dovecot/limits/imap/vsz_limit",
	"mail/dovecot/limits/pop3/process_limit",
	"mail/dovecot/limits/pop3/vsz_limit",
	"mail/dovecot/limits/auth/client_limit",
	"mail/dovecot/limits/anvil/client_limit",
	"mail/dovecot/limits/managesieve/process_limit",
	"mail/dovecot/limits/managesieve/mail_max_userip_connections",
	"mail/dovecot/process/mmap_disable",
	"mail/dovecot/process/dotlock_use_excl",
	"mail/dovecot/process/mail_fsync",
	"mail/dovecot/process/lock_method",
	"mail/dovecot/process/mail_nfs_storage",
	"mail/dovecot/process/mail_nfs_index",
}

// mailconfPrefixes are the UCR prefixes whose every key the renderers read.
var mailconfPrefixes = []string{"mail/postfix/"}

// IsPolicyKey reports whether key is a setting mailsync reads.
func IsPolicyKey(key string) bool {
	if _, ok := policyDefaults[key]; ok {
		return true
	}
	for _, k := range mailconfKeys {
		if key == k {
			return true
		}
	}
	for _, p := range mailconfPrefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// Config is the whole configuration.
type Config struct {
	// Host is this mail host's FQDN. Default: UCR hostname.domainname, else
	// the system hostname.
	Host     string   `yaml:"host"`
	StateDir string   `yaml:"state_dir"`
	UCRFile  string   `yaml:"ucr_file"`
	Handlers []string `yaml:"handlers"`
	// Configure names the servers whose configuration mailsync renders
	// and installs (`mailsync configure`, and `mailsync run` when the
	// settings change): postfix, dovecot. Default none: a hand-written
	// main.cf is never replaced unasked.
	Configure []string          `yaml:"configure"`
	LDAP      LDAP              `yaml:"ldap"`
	NATS      NATS              `yaml:"nats"`
	Dovecot   Dovecot           `yaml:"dovecot"`
	Postfix   Postfix           `yaml:"postfix"`
	Policy    map[string]string `yaml:"policy"`
	Log       Log               `yaml:"log"`
	Listener  Listener          `yaml:"listener"`
	Metrics   Metrics           `yaml:"metrics"`
	// Peers are the other mail hosts, by FQDN, that mail moves to when a
	// user's home server changes (move_on_homeserver_change).
	Peers map[string]Peer `yaml:"peers"`
}

// Peer is another mail host's Dovecot, as this host reaches it.
type Peer struct {
	// DoveadmURL is its doveadm HTTP API, read to verify a move.
	DoveadmURL string `yaml:"doveadm_url"`
	// DoveadmTCP is host:port of its doveadm server (service doveadm
	// inet_listener); this host's Dovecot runs dsync against it with the
	// shared doveadm_password.
	DoveadmTCP string `yaml:"doveadm_tcp"`
	APIKeyFile string `yaml:"api_key_file"`

	APIKey string `yaml:"-"`
}

// Metrics is where /metrics and /healthz are served.
type Metrics struct {
	// Listen is host:port (default 127.0.0.1:9154); "off" disables the
	// endpoint. The host must be a loopback address unless AllowRemote is
	// set: /metrics and /healthz tell anyone who reaches them about the
	// directory and the mail servers.
	Listen string `yaml:"listen"`
	// AllowRemote permits a Listen address off loopback (behind a
	// firewall or a proxy that restricts who connects).
	AllowRemote bool `yaml:"allow_remote"`
}

// LDAP is the directory to follow.
type LDAP struct {
	// Flavor is the directory server: openldap (syncprov) or 389ds (its
	// Content Synchronization plugin). Default openldap.
	Flavor           string `yaml:"flavor"`
	URL              string `yaml:"url"`
	BaseDN           string `yaml:"base_dn"`
	BindDN           string `yaml:"bind_dn"`
	BindPasswordFile string `yaml:"bind_password_file"`
	StartTLS         bool   `yaml:"start_tls"`
	CAFile           string `yaml:"ca_file"`
	// BindPassword is read from BindPasswordFile; never from the file itself.
	BindPassword string `yaml:"-"`
}

// Listener tunes the directory listener.
type Listener struct {
	// Enabled runs a listener in this process (default true).
	Enabled           *bool   `yaml:"enabled"`
	MassDeleteShare   float64 `yaml:"mass_delete_share"`
	MassDeleteMin     int     `yaml:"mass_delete_min"`
	ConfirmMassDelete bool    `yaml:"confirm_mass_delete"`
}

// NATS is the JetStream to use: embedded when URL is empty.
type NATS struct {
	URL string `yaml:"url"`
	// Port is no longer used: the embedded server has no network listener
	// unless Listen is set. Accepted so older configs still load.
	Port     int `yaml:"port"`
	Replicas int `yaml:"replicas"`
	// NATSAuth is this daemon's identity on an external server (its
	// role's user: listener, or worker on a host without a listener).
	NATSAuth `yaml:",inline"`
	// Admin is the command line's identity on an external server
	// (status, dead, replay, confirm-deletes); empty: the daemon's.
	Admin NATSAuth `yaml:"admin"`
	// CAFile verifies the server's TLS certificate (tls:// URLs).
	CAFile string `yaml:"ca_file"`
	// Listen is host:port where the embedded server accepts other hosts'
	// daemons (standby listeners, workers), with TLS (TLSCertFile,
	// TLSKeyFile) and the generated credentials; empty: no network
	// listener at all.
	Listen      string `yaml:"listen"`
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
}

// NATSAuth is one NATS identity: a .creds file, an nkey seed, or a user
// with a password from a file.
type NATSAuth struct {
	// CredentialsFile is a NATS .creds file (JWT and nkey seed).
	CredentialsFile string `yaml:"credentials_file"`
	// NkeySeedFile authenticates with an nkey seed.
	NkeySeedFile string `yaml:"nkey_seed_file"`
	// User and PasswordFile authenticate with a user and password.
	User         string `yaml:"user"`
	PasswordFile string `yaml:"password_file"`

	Password string `yaml:"-"`
}

// Dovecot is the local Dovecot mailsync drives.
type Dovecot struct {
	DoveadmURL string `yaml:"doveadm_url"`
	// CAFile verifies the doveadm API's certificate (https URLs, the
	// peers' too); empty: the system's roots.
	CAFile             string `yaml:"ca_file"`
	APIKeyFile         string `yaml:"api_key_file"`
	IMAPAddr           string `yaml:"imap_addr"`
	MasterUser         string `yaml:"master_user"`
	MasterPasswordFile string `yaml:"master_password_file"`
	// MailHome is Dovecot's mail_home template; %Ld and %Ln are the
	// lowercased domain and local part (UCS layout, reference §1.5).
	MailHome string `yaml:"mail_home"`
	// IndexHome is the separate index template, used when
	// mail/dovecot/location/separate_index is set.
	IndexHome string `yaml:"index_home"`
	// PublicHome is the root of the public namespace: the maildirs of the
	// shared folders without an address, <public_home>/<domain>/<name>
	// (reference §2). Default /var/spool/dovecot/public, UCS's.
	PublicHome string `yaml:"public_home"`
	// ConfDir is Dovecot's configuration directory, holding dovecot.conf;
	// `mailsync configure` writes its fragments to conf.d/ there.
	// Default /etc/dovecot.
	ConfDir string `yaml:"conf_dir"`
	// UnitDropIn is the systemd drop-in carrying Dovecot's fd limit
	// (LimitNOFILE, manual 14.7.12); "none": not written. Default
	// /etc/systemd/system/dovecot.service.d/mailsync-limits.conf.
	UnitDropIn string `yaml:"unit_dropin"`
	// LMTPAddr is where Postfix delivers to Dovecot (virtual_transport
	// lmtp:<addr>): unix:private/dovecot-lmtp or inet:host:port.
	LMTPAddr string `yaml:"lmtp_addr"`
	// AuthAddr is Dovecot's auth socket Postfix's smtpd asks for SASL
	// (smtpd_sasl_path): private/auth or inet:host:port.
	AuthAddr string `yaml:"auth_addr"`
	// Owner of created directories, as uid:gid (default: the spool's owner).
	Owner string `yaml:"owner"`
	// MovingUserdb is the passwd-file mailsync lists users in while their
	// mail moves away (default <state_dir>/moving.passwd); Dovecot reads it
	// as a userdb for doveadm (README).
	MovingUserdb string `yaml:"moving_userdb"`

	APIKey         string `yaml:"-"`
	MasterPassword string `yaml:"-"`
}

// Postfix is where the maps go.
type Postfix struct {
	MapDir  string `yaml:"map_dir"`
	MapType string `yaml:"map_type"`
	Postmap string `yaml:"postmap"`
	// ConfigDir is the Postfix config dir: where `mailsync configure`
	// writes main.cf and master.cf, and postmap reads main.cf from
	// (postmap -c). Default /etc/postfix.
	ConfigDir string `yaml:"config_dir"`
	// Coalesce is the window over which map changes are gathered.
	Coalesce time.Duration `yaml:"coalesce"`
	// Binary is the postfix command (check, reload, status).
	Binary string `yaml:"binary"`
	// RelayAuthFile holds "username:password" for mail/relayauth=yes;
	// mailsync writes it into <config_dir>/smtp_auth (0600) with postmap.
	RelayAuthFile string `yaml:"relay_auth_file"`
	// QueueDir and DataDir are main.cf's queue_directory and
	// data_directory (Debian's /var/spool/postfix, /var/lib/postfix).
	QueueDir string `yaml:"queue_dir"`
	DataDir  string `yaml:"data_dir"`
	// Listen is where the master.cf services listen: smtp (25),
	// submission (587), smtps (465), each a master.cf service name or
	// host:port; "" for a port keeps Postfix's service name.
	Listen PostfixListen `yaml:"listen"`
	// TLSCert and TLSKey are smtpd's certificate (UCS: the host's
	// certificate; here Debian's snakeoil by default).
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// WriteMainCFLocal lets mailsync write the expansion limit line itself.
	WriteMainCFLocal bool   `yaml:"write_main_cf_local"`
	MainCFLocal      string `yaml:"main_cf_local"`
}

// PostfixListen are the SMTP services' addresses (manual 14.7.5).
type PostfixListen struct {
	SMTP       string `yaml:"smtp"`
	Submission string `yaml:"submission"`
	SMTPS      string `yaml:"smtps"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"` // auto, json, console
}

// Load reads, defaults and validates the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, filepath.Dir(path))
}

// Parse decodes a config document; relative file names resolve against dir.
func Parse(data []byte, dir string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := c.complete(dir); err != nil {
		return nil, err
	}
	return &c, nil
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

func (c *Config) complete(dir string) error {
	var errs Errors
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	ucr := map[string]string{}
	if c.UCRFile != "" {
		c.UCRFile = abs(c.UCRFile)
		m, err := ReadUCR(c.UCRFile)
		if err != nil {
			bad("ucr_file", "%v", err)
		}
		ucr = m
	}
	pol := map[string]string{}
	for k, v := range policyDefaults {
		pol[k] = v
	}
	for k, v := range ucr {
		if IsPolicyKey(k) && v != "" {
			pol[k] = v
		}
	}
	for k, v := range c.Policy {
		if !IsPolicyKey(k) {
			bad("policy."+k, "unknown policy setting")
			continue
		}
		pol[k] = v
	}
	c.Policy = pol
	for _, k := range []string{KeyRename, KeyDelete, KeySeparateIndex, KeyMoveOnHomeChange} {
		if _, err := parseBool(pol[k]); err != nil {
			bad("policy."+k, "%v", err)
		}
	}
	if n, err := strconv.Atoi(pol[KeyExpansionLimit]); err != nil || n < 1 {
		bad("policy."+KeyExpansionLimit, "want a positive number, got %q", pol[KeyExpansionLimit])
	}

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
	// "mail.example.org" and the other way round.
	if h, err := address.Host("host", strings.TrimSpace(c.Host)); err != nil {
		bad("host", "want this mail host's FQDN: %v", err)
	} else {
		c.Host = h
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/mailsync"
	}
	c.StateDir = abs(c.StateDir)
	if len(c.Handlers) == 0 {
		c.Handlers = []string{"mailbox", "aliases", "homeserver"}
	}
	for i, h := range c.Handlers {
		switch h {
		case "mailbox", "aliases", "homeserver":
		default:
			bad(fmt.Sprintf("handlers[%d]", i), "unknown handler %q (want mailbox, aliases, homeserver)", h)
		}
	}

	for i, p := range c.Configure {
		switch p {
		case "postfix", "dovecot":
		default:
			bad(fmt.Sprintf("configure[%d]", i), "unknown server %q (want postfix, dovecot)", p)
		}
	}

	if c.LDAP.URL == "" {
		bad("ldap.url", "required")
	} else if u, err := url.Parse(c.LDAP.URL); err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") {
		bad("ldap.url", "want ldap:// or ldaps://, got %q", c.LDAP.URL)
	}
	if c.LDAP.BaseDN == "" {
		bad("ldap.base_dn", "required")
	}
	switch c.LDAP.Flavor {
	case "":
		c.LDAP.Flavor = "openldap"
	case "openldap", "389ds":
	default:
		bad("ldap.flavor", "want openldap or 389ds, got %q", c.LDAP.Flavor)
	}
	if c.LDAP.BindDN != "" && c.LDAP.BindPasswordFile == "" {
		bad("ldap.bind_password_file", "required with ldap.bind_dn")
	}
	if c.LDAP.BindPasswordFile != "" {
		c.LDAP.BindPasswordFile = abs(c.LDAP.BindPasswordFile)
		pw, err := readSecret(c.LDAP.BindPasswordFile)
		if err != nil {
			bad("ldap.bind_password_file", "%v", err)
		}
		c.LDAP.BindPassword = pw
	}
	c.LDAP.CAFile = abs(c.LDAP.CAFile)
	if c.Listener.MassDeleteShare == 0 {
		c.Listener.MassDeleteShare = 0.10
	}
	if c.Listener.MassDeleteShare < 0 || c.Listener.MassDeleteShare > 1 {
		bad("listener.mass_delete_share", "want a share between 0 and 1, got %v", c.Listener.MassDeleteShare)
	}
	if c.Listener.MassDeleteMin == 0 {
		c.Listener.MassDeleteMin = 20
	}
	if c.Listener.Enabled == nil {
		t := true
		c.Listener.Enabled = &t
	}

	if c.NATS.Replicas == 0 {
		c.NATS.Replicas = 1
	}
	c.NATS.CAFile = abs(c.NATS.CAFile)
	resolveAuth := func(key string, a *NATSAuth) {
		a.CredentialsFile = abs(a.CredentialsFile)
		a.NkeySeedFile = abs(a.NkeySeedFile)
		if a.User == "" {
			return
		}
		if a.PasswordFile == "" {
			bad(key+"password_file", "required with %suser", key)
			return
		}
		pw, err := readSecret(abs(a.PasswordFile))
		if err != nil {
			bad(key+"password_file", "%v", err)
		}
		a.Password = pw
	}
	resolveAuth("nats.", &c.NATS.NATSAuth)
	resolveAuth("nats.admin.", &c.NATS.Admin)
	c.NATS.TLSCertFile = abs(c.NATS.TLSCertFile)
	c.NATS.TLSKeyFile = abs(c.NATS.TLSKeyFile)
	if c.NATS.Listen != "" {
		if c.NATS.URL != "" {
			bad("nats.listen", "is for the embedded server; nats.url names an external one")
		} else if _, _, err := net.SplitHostPort(c.NATS.Listen); err != nil {
			bad("nats.listen", "want host:port, got %q", c.NATS.Listen)
		}
		if c.NATS.TLSCertFile == "" || c.NATS.TLSKeyFile == "" {
			bad("nats.tls_cert_file", "nats.listen needs TLS: set nats.tls_cert_file and nats.tls_key_file")
		}
	}

	if c.Dovecot.MailHome == "" {
		c.Dovecot.MailHome = "/var/spool/dovecot/private/%Ld/%Ln" // UCS layout, reference §1.5
	}
	if c.Dovecot.IndexHome == "" {
		c.Dovecot.IndexHome = "/var/lib/dovecot/index/%Ld/%Ln"
	}
	if c.Dovecot.PublicHome == "" {
		c.Dovecot.PublicHome = "/var/spool/dovecot/public" // UCS layout, reference §2
	}
	if !filepath.IsAbs(c.Dovecot.PublicHome) || filepath.Clean(c.Dovecot.PublicHome) == "/" {
		bad("dovecot.public_home", "want an absolute directory below /, got %q", c.Dovecot.PublicHome)
	}
	c.Dovecot.PublicHome = filepath.Clean(c.Dovecot.PublicHome)
	if c.Dovecot.ConfDir == "" {
		c.Dovecot.ConfDir = "/etc/dovecot" // Debian's dovecot-core
	}
	c.Dovecot.ConfDir = abs(c.Dovecot.ConfDir)
	switch c.Dovecot.UnitDropIn {
	case "":
		c.Dovecot.UnitDropIn = "/etc/systemd/system/dovecot.service.d/mailsync-limits.conf"
	case "none":
		c.Dovecot.UnitDropIn = ""
	default:
		c.Dovecot.UnitDropIn = abs(c.Dovecot.UnitDropIn)
	}
	if !strings.Contains(c.Dovecot.MailHome, "%Ln") || !filepath.IsAbs(c.Dovecot.MailHome) {
		bad("dovecot.mail_home", "want an absolute template with %%Ln (and %%Ld), got %q", c.Dovecot.MailHome)
	}
	c.Dovecot.CAFile = abs(c.Dovecot.CAFile)
	if c.Dovecot.APIKeyFile != "" {
		c.Dovecot.APIKeyFile = abs(c.Dovecot.APIKeyFile)
		k, err := readSecret(c.Dovecot.APIKeyFile)
		if err != nil {
			bad("dovecot.api_key_file", "%v", err)
		}
		c.Dovecot.APIKey = k
	}
	if c.Dovecot.MasterPasswordFile != "" {
		c.Dovecot.MasterPasswordFile = abs(c.Dovecot.MasterPasswordFile)
		k, err := readSecret(c.Dovecot.MasterPasswordFile)
		if err != nil {
			bad("dovecot.master_password_file", "%v", err)
		}
		c.Dovecot.MasterPassword = k
	}
	if c.wants("mailbox") && c.Dovecot.DoveadmURL == "" {
		bad("dovecot.doveadm_url", "required by the mailbox handler")
	}
	if c.Dovecot.MovingUserdb == "" {
		c.Dovecot.MovingUserdb = filepath.Join(c.StateDir, "moving.passwd")
	}
	c.Dovecot.MovingUserdb = abs(c.Dovecot.MovingUserdb)
	peers := make(map[string]Peer, len(c.Peers))
	for host, p := range c.Peers {
		key := "peers." + host
		h, err := address.Host(key, strings.TrimSpace(host))
		if err != nil {
			bad(key, "want a mail host's FQDN as the key: %v", err)
		} else if h == c.Host {
			bad(key, "is this host (host)")
		}
		if u, err := url.Parse(p.DoveadmURL); p.DoveadmURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad(key+".doveadm_url", "want http(s)://host:port, got %q", p.DoveadmURL)
		}
		if _, port, err := net.SplitHostPort(p.DoveadmTCP); err != nil || port == "" {
			bad(key+".doveadm_tcp", "want host:port of its doveadm server, got %q", p.DoveadmTCP)
		}
		if p.APIKeyFile == "" {
			bad(key+".api_key_file", "required")
		} else {
			p.APIKeyFile = abs(p.APIKeyFile)
			k, err := readSecret(p.APIKeyFile)
			if err != nil {
				bad(key+".api_key_file", "%v", err)
			}
			p.APIKey = k
		}
		peers[h] = p
	}
	c.Peers = peers
	if move, err := parseBool(pol[KeyMoveOnHomeChange]); err == nil && move {
		if !c.wants("mailbox") {
			bad("policy."+KeyMoveOnHomeChange, "yes needs the mailbox handler (handlers)")
		}
		if len(c.Peers) == 0 {
			bad("peers", "required with policy.%s=yes: the mail hosts mail may move to", KeyMoveOnHomeChange)
		}
	}

	if c.Postfix.MapDir == "" {
		c.Postfix.MapDir = "/etc/postfix/mailsync"
	}
	c.Postfix.MapDir = abs(c.Postfix.MapDir)
	if c.Postfix.MapType == "" {
		c.Postfix.MapType = "hash" // as UCS
	}
	switch c.Postfix.MapType {
	case "hash", "lmdb", "cdb":
	default:
		bad("postfix.map_type", "want hash, lmdb or cdb, got %q", c.Postfix.MapType)
	}
	c.Postfix.ConfigDir = abs(c.Postfix.ConfigDir)
	if c.Postfix.Postmap == "" {
		c.Postfix.Postmap = "/usr/sbin/postmap"
	}
	if c.Postfix.Coalesce == 0 {
		c.Postfix.Coalesce = 20 * time.Millisecond
	}
	// Debian's Postfix layout.
	if c.Postfix.ConfigDir == "" {
		c.Postfix.ConfigDir = "/etc/postfix"
	}
	for _, d := range []struct {
		v    *string
		def  string
		file bool
	}{
		{&c.Postfix.Binary, "/usr/sbin/postfix", false},
		{&c.Postfix.QueueDir, "/var/spool/postfix", true},
		{&c.Postfix.DataDir, "/var/lib/postfix", true},
		{&c.Postfix.TLSCert, "/etc/ssl/certs/ssl-cert-snakeoil.pem", true},
		{&c.Postfix.TLSKey, "/etc/ssl/private/ssl-cert-snakeoil.key", true},
		{&c.Postfix.Listen.SMTP, "smtp", false},
		{&c.Postfix.Listen.Submission, "submission", false},
		{&c.Postfix.Listen.SMTPS, "submissions", false},
		{&c.Postfix.RelayAuthFile, "", true},
		{&c.Dovecot.LMTPAddr, "unix:private/dovecot-lmtp", false}, // UCS postinst (reference §5.1)
		{&c.Dovecot.AuthAddr, "private/auth", false},              // Debian's dovecot-core, UCS's 10-master.conf
	} {
		if *d.v == "" {
			*d.v = d.def
		}
		if d.file {
			*d.v = abs(*d.v)
		}
	}
	if c.Postfix.MainCFLocal == "" {
		c.Postfix.MainCFLocal = filepath.Join(c.Postfix.ConfigDir, "main.cf.local") // manual 14.7.7
	}

	if c.Metrics.Listen == "" {
		c.Metrics.Listen = "127.0.0.1:9154"
	}
	if c.Metrics.Listen != "off" {
		if host, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			bad("metrics.listen", "want host:port or off, got %q", c.Metrics.Listen)
		} else if !c.Metrics.AllowRemote && !isLoopback(host) {
			bad("metrics.listen", "%q is reachable from other hosts; use a loopback address (127.0.0.1:9154) or set metrics.allow_remote: true", c.Metrics.Listen)
		}
	}
	switch c.Log.Level {
	case "":
		c.Log.Level = "info"
	case "trace", "debug", "info", "warn", "error":
	default:
		bad("log.level", "want debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "":
		c.Log.Format = "auto"
	case "auto", "json", "console":
	default:
		bad("log.format", "want auto, json or console, got %q", c.Log.Format)
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

func (c *Config) wants(h string) bool {
	for _, x := range c.Handlers {
		if x == h {
			return true
		}
	}
	return false
}

// Wants reports whether handler h is enabled.
func (c *Config) Wants(h string) bool { return c.wants(h) }

// Bool returns a boolean policy setting.
func (c *Config) Bool(key string) bool {
	b, _ := parseBool(c.Policy[key])
	return b
}

// Int returns a numeric policy setting.
func (c *Config) Int(key string) int {
	n, _ := strconv.Atoi(c.Policy[key])
	return n
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

// isLoopback tells whether a listen host reaches this host alone: localhost
// or a loopback IP. An empty host listens on every interface.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
