package config

import (
	"strconv"
	"time"
)

// Defaults the handlers and the listener fall back to when a caller (a
// test) leaves a setting out; Defaults uses the same values.
const (
	// DefaultMapType is what UCS uses for its file-based maps.
	DefaultMapType = "hash"
	// DefaultPostmap is where Debian's postfix package installs postmap.
	DefaultPostmap = "/usr/sbin/postmap"
	// DefaultCoalesce is the window over which map changes share one
	// postmap run.
	DefaultCoalesce = 20 * time.Millisecond
	// DefaultPostfixConfigDir is Debian's Postfix configuration directory.
	DefaultPostfixConfigDir = "/etc/postfix"
	// DefaultMainCFLocal is the file UCS appends to main.cf (manual 14.7.7,
	// reference §5.2).
	DefaultMainCFLocal = DefaultPostfixConfigDir + "/main.cf.local"
	// DefaultExpansionLimit is Postfix's virtual_alias_expansion_limit
	// default (postconf(5)); UCS does not change it (reference §3.4).
	DefaultExpansionLimit = 1000
	// A refresh deleting more than DefaultMassDeleteShare of the known
	// entries, and at least DefaultMassDeleteMin, waits for an operator
	// (docs/operations.md).
	DefaultMassDeleteShare = 0.10
	DefaultMassDeleteMin   = 20
)

// Defaults is the configuration before the file is read: every default
// mailsync has, in one place, each with where it comes from. The file is
// decoded over it, so a key the file leaves out keeps its value here. The
// handlers enabled by default are every handler there is (hs.Names).
//
// Three defaults follow from other settings and are filled in after the
// file is read (derive): host (ucr_file's hostname.domainname, else the
// system's host name), dovecot.moving_userdb (<state_dir>/moving.passwd)
// and postfix.main_cf_local (<postfix.config_dir>/main.cf.local).
func Defaults(hs Handlers) *Config {
	return &Config{
		StateDir: "/var/lib/mailsync",
		Handlers: hs.Names(),
		LDAP: LDAP{
			Flavor: FlavorOpenLDAP,
		},
		Listener: Listener{
			Enabled:         true,
			MassDeleteShare: DefaultMassDeleteShare,
			MassDeleteMin:   DefaultMassDeleteMin,
		},
		NATS: NATS{Replicas: 1},
		Dovecot: Dovecot{
			MailHome:   "/var/spool/dovecot/private/%Ld/%Ln", // UCS layout, reference §1.5
			IndexHome:  "/var/lib/dovecot/index/%Ld/%Ln",
			PublicHome: "/var/spool/dovecot/public", // UCS layout, reference §2
			ConfDir:    "/etc/dovecot",              // Debian's dovecot-core
			// systemd's drop-in for Dovecot's fd limit (manual 14.7.12).
			UnitDropIn: "/etc/systemd/system/dovecot.service.d/mailsync-limits.conf",
			LMTPAddr:   "unix:private/dovecot-lmtp", // UCS postinst (reference §5.1)
			AuthAddr:   "private/auth",              // Debian's dovecot-core, UCS's 10-master.conf
		},
		Postfix: Postfix{
			MapDir:   "/etc/postfix/mailsync",
			MapType:  DefaultMapType,
			Postmap:  DefaultPostmap,
			Coalesce: DefaultCoalesce,
			// Debian's Postfix layout.
			ConfigDir: DefaultPostfixConfigDir,
			Binary:    "/usr/sbin/postfix",
			QueueDir:  "/var/spool/postfix",
			DataDir:   "/var/lib/postfix",
			TLSCert:   "/etc/ssl/certs/ssl-cert-snakeoil.pem",
			TLSKey:    "/etc/ssl/private/ssl-cert-snakeoil.key",
			Listen:    PostfixListen{SMTP: "smtp", Submission: "submission", SMTPS: "submissions"},
		},
		Metrics: Metrics{Listen: "127.0.0.1:9154"},
		Log:     Log{Level: "info", Format: "auto"},
	}
}

// policyDefaults are the policy values when neither the config file nor the
// UCR file sets them, as UCR strings.
func policyDefaults() map[string]string {
	return map[string]string{
		// The manual (14.7.7) says rename is the standard setting since UCS
		// 3.0; UCS's code defaults to no (reference §1.4). mailsync follows
		// the manual.
		KeyRename: "yes",
		// UCS: not set, treated as false (reference §5.1).
		KeyDelete:        "no",
		KeySeparateIndex: "no",
		// Beyond UCS (manual 14.7.10: mail data is not moved): off by default.
		KeyMoveOnHomeChange: "no",
		// UCS postinst defaults (reference §5.1).
		KeyFolderSpam:     "Spam",
		KeyFolderHam:      "Ham",
		KeyExpansionLimit: strconv.Itoa(DefaultExpansionLimit),
	}
}
