// Package config loads mailsync's one configuration file: it decodes the
// file over the defaults (Defaults, each with where it comes from), reads
// the secrets from their files, parses the policy once into typed values,
// and validates every setting, naming the key of each error (Validate).
// Keys an older release read and this one does not are accepted with a
// warning naming them (Removed).
//
// Policy settings carry UCS's UCR names (mail/dovecot/mailbox/rename, ...) so
// an administrator recognises them; a `ucr dump`-style file ("key: value"
// lines) may be named with ucr_file, and its values apply unless the config
// file's policy section sets the same key.
package config

import (
	"strings"
	"time"
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
	if _, ok := policyDefaults()[key]; ok {
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
	Configure []string `yaml:"configure"`
	LDAP      LDAP     `yaml:"ldap"`
	NATS      NATS     `yaml:"nats"`
	Dovecot   Dovecot  `yaml:"dovecot"`
	Postfix   Postfix  `yaml:"postfix"`
	Policy    Policy   `yaml:"policy"`
	Log       Log      `yaml:"log"`
	Listener  Listener `yaml:"listener"`
	Metrics   Metrics  `yaml:"metrics"`
	// Peers are the other mail hosts, by FQDN, that mail moves to when a
	// user's home server changes (move_on_homeserver_change).
	Peers map[string]Peer `yaml:"peers"`

	// Warnings are the settings the file gives that mailsync no longer
	// reads (deprecated keys), each naming its key; the daemon logs them.
	Warnings []string `yaml:"-"`

	handlers Handlers
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

// The directory flavors ldap.flavor names: the one list of them, which
// validation reads and listener.ParseFlavor gives one implementation each.
const (
	FlavorOpenLDAP = "openldap" // slapd's syncprov overlay
	Flavor389DS    = "389ds"    // 389-DS's Content Synchronization plugin
)

// Flavors are the values ldap.flavor takes, the default first.
func Flavors() []string { return []string{FlavorOpenLDAP, Flavor389DS} }

// LDAP is the directory to follow.
type LDAP struct {
	// Flavor is the directory server, one of Flavors: openldap (syncprov)
	// or 389ds (its Content Synchronization plugin). Default openldap.
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
	Enabled           bool    `yaml:"enabled"`
	MassDeleteShare   float64 `yaml:"mass_delete_share"`
	MassDeleteMin     int     `yaml:"mass_delete_min"`
	ConfirmMassDelete bool    `yaml:"confirm_mass_delete"`
}

// NATS is the JetStream to use: embedded when URL is empty.
type NATS struct {
	URL string `yaml:"url"`
	// Port was the embedded server's port; it has no network listener
	// unless Listen is set. Removed: a warning names it.
	Port     Removed `yaml:"port"`
	Replicas int     `yaml:"replicas"`
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
	CAFile     string `yaml:"ca_file"`
	APIKeyFile string `yaml:"api_key_file"`
	// IMAPAddr, MasterUser and MasterPasswordFile were read and never
	// used: mailsync drives Dovecot through doveadm alone. Removed: a
	// warning names each one set.
	IMAPAddr           Removed `yaml:"imap_addr"`
	MasterUser         Removed `yaml:"master_user"`
	MasterPasswordFile Removed `yaml:"master_password_file"`
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

	APIKey string `yaml:"-"`
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
