package mailconf

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// UCR variables of the Postfix renderer (manual 14.7.1-14.7.8, reference §5.2).
const (
	KeyRelayHost        = "mail/relayhost"
	KeyRelayAuth        = "mail/relayauth"
	KeyTLSClientLevel   = "mail/postfix/tls/client/level"
	KeyMessageSizeLimit = "mail/messagesizelimit"
	KeyArchiveFolder    = "mail/archivefolder"
	KeySoftBounce       = "mail/postfix/softbounce"
	KeyPostscreen       = "mail/postfix/postscreen/enabled"
	KeyMyNetworks       = "mail/postfix/mynetworks"
	KeyExpansionLimit   = "virtual_alias_expansion_limit"
	// PrefixPostscreen's variables become postscreen_* parameters:
	// mail/postfix/postscreen/greet/action → postscreen_greet_action.
	PrefixPostscreen = "mail/postfix/postscreen/"
	// PrefixMasterOptions' variables become -o options of a master.cf
	// service: mail/postfix/mastercf/options/<service>/<parameter>.
	PrefixMasterOptions = "mail/postfix/mastercf/options/"
)

// postscreenDefaults are UCS's values for its postscreen variables
// (40_postscreen, reference §5.2), emitted whether or not postscreen is on.
var postscreenDefaults = []struct{ key, param, def string }{
	{"dnsbl/action", "postscreen_dnsbl_action", "enforce"},
	{"dnsbl/threshold", "postscreen_dnsbl_threshold", "3"},
	{"dnsbl/sites", "postscreen_dnsbl_sites", ""},
	{"greet/action", "postscreen_greet_action", "drop"},
	{"greet/ttl", "postscreen_greet_ttl", "1d"},
	{"non_smtp_command/enable", "postscreen_non_smtp_command_enable", "no"},
	{"non_smtp_command/action", "postscreen_non_smtp_command_action", "ignore"},
	{"bare_newline/enable", "postscreen_bare_newline_enable", "no"},
	{"bare_newline/action", "postscreen_bare_newline_action", "ignore"},
	{"blacklist/action", "postscreen_denylist_action", "ignore"},
}

// PostfixDefaultMessageSizeLimit is Postfix's own message_size_limit, the
// limit when mail/messagesizelimit is unset (manual 14.7.2).
const PostfixDefaultMessageSizeLimit = 10240000

// Postfix is what the Postfix renderer needs besides the settings: where
// things are on this host.
type Postfix struct {
	Host      string // myhostname, this mail host's FQDN
	ConfigDir string // where main.cf and master.cf go
	QueueDir  string
	DataDir   string
	Binary    string // the postfix command
	Postmap   string
	// MapDir and MapType are mailsync's maps (handlers aliases and
	// homeserver write them).
	MapDir, MapType string
	// LMTP is Dovecot's LMTP (virtual_transport lmtp:<LMTP>), AuthPath its
	// auth socket for SASL (smtpd_sasl_path).
	LMTP, AuthPath  string
	TLSCert, TLSKey string
	// SMTP, Submission and SMTPS are the master.cf service names or
	// host:port the three ports listen on (manual 14.7.5).
	SMTP, Submission, SMTPS string
	// RelayCredentials is "username:password" for the relay host
	// (mail/relayauth=yes), read from a file of its own.
	RelayCredentials string
	// MainCFLocal and MasterCFLocal are the administrator's additions
	// (manual 14.7.7); absent files add nothing.
	MainCFLocal, MasterCFLocal string
	// Directory answers whether an address is the directory's
	// (mail/archivefolder must be; nil: no directory to ask, a local
	// archive address is refused).
	Directory *Directory
}

// Directory is what the renderer knows of the directory's addresses.
type Directory struct {
	Domains   map[string]bool // hosted domains (virtual_mailbox_domains)
	Addresses map[string]bool // every address mail is delivered to (mailboxes, aliases, groups, lists)
}

// DirectoryFromTables reads the keys of mailsync's map sources (virtual
// domains, mailboxes, aliases; as handlers/aliases.Tables renders them).
func DirectoryFromTables(domains []byte, addressTables ...[]byte) *Directory {
	d := &Directory{Domains: tableKeys(domains), Addresses: map[string]bool{}}
	for _, t := range addressTables {
		for k := range tableKeys(t) {
			d.Addresses[k] = true
		}
	}
	return d
}

func tableKeys(src []byte) map[string]bool {
	out := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' || l[0] == ' ' || l[0] == '\t' {
			continue
		}
		k, _, _ := strings.Cut(l, " ")
		k, _, _ = strings.Cut(k, "\t")
		out[strings.ToLower(k)] = true
	}
	return out
}

var (
	relayHostRE = regexp.MustCompile(`^(\[[A-Za-z0-9.:-]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?$`)
	addressRE   = regexp.MustCompile(`^[A-Za-z0-9!#$%&'*+/=?^_{|}~.-]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)
	paramRE     = regexp.MustCompile(`^[a-z0-9_]+$`)
	tlsLevels   = map[string]bool{"none": true, "may": true, "encrypt": true, "dane": true, "dane-only": true, "fingerprint": true, "verify": true, "secure": true}
)

// RenderPostfix renders main.cf, master.cf and, with mail/relayauth, the
// smtp_auth map from the settings. Every bad setting is a SettingError
// naming its variable; nothing is rendered then.
func RenderPostfix(s Settings, pf Postfix) (*Product, error) {
	var errs []error
	bad := func(key, reason string) { errs = append(errs, &SettingError{Key: key, Value: s[key], Reason: reason}) }
	boolean := func(key string) bool {
		b, err := s.Bool(key, false)
		if err != nil {
			errs = append(errs, err)
		}
		return b
	}
	// No value may break out of its line.
	for k, v := range s {
		if strings.ContainsAny(v, "\r\n\x00") {
			bad(k, "a value must be one line")
		}
	}

	m := &cf{}
	m.comment("Rendered by `mailsync configure` from the settings (UCS's UCR variable names;")
	m.comment("manual 14.7). Changes here are overwritten: put them into main.cf.local.")
	m.set("compatibility_level", "3.6", "")
	m.set("myhostname", pf.Host, "host")
	if _, dom, ok := strings.Cut(pf.Host, "."); ok {
		m.set("mydomain", dom, "host")
	}
	m.set("myorigin", "$myhostname", "")
	m.set("mydestination", "$myhostname, localhost.$mydomain, localhost", "")
	m.set("mynetworks", s.Get(KeyMyNetworks, "127.0.0.0/8 [::1]/128"), KeyMyNetworks)
	m.set("queue_directory", pf.QueueDir, "postfix.queue_dir")
	m.set("data_directory", pf.DataDir, "postfix.data_dir")
	// Local aliases (postmaster@, root@ this host) are not the
	// directory's: main.cf.local may name /etc/aliases.
	m.set("alias_maps", "", "")
	m.set("alias_database", "", "")
	m.set("biff", "no", "")
	m.set("append_dot_mydomain", "no", "")
	m.set("smtpd_banner", "$myhostname ESMTP", "")

	// 14.7.1 relay host
	m.section("14.7.1 relay host")
	relay := s.Get(KeyRelayHost, "")
	if relay != "" && !relayHostRE.MatchString(relay) {
		bad(KeyRelayHost, "want the relay host's FQDN, [host] or host:port")
	}
	m.set("relayhost", relay, KeyRelayHost)
	relayAuth := boolean(KeyRelayAuth)
	level := s.Get(KeyTLSClientLevel, "may")
	if !tlsLevels[level] {
		bad(KeyTLSClientLevel, "want none, may, encrypt, dane, dane-only, fingerprint, verify or secure")
	}
	var files []File
	if relayAuth && relay != "" {
		if !strings.Contains(pf.RelayCredentials, ":") {
			errs = append(errs, &SettingError{Key: KeyRelayAuth, Value: s[KeyRelayAuth],
				Reason: "yes needs the relay's username:password (postfix.relay_auth_file)"})
		}
		authMap := filepath.Join(pf.ConfigDir, "smtp_auth")
		m.set("smtp_sasl_auth_enable", "yes", KeyRelayAuth)
		m.set("smtp_sasl_password_maps", "hash:"+authMap, KeyRelayAuth)
		m.set("smtp_sasl_security_options", "noanonymous", KeyRelayAuth)
		m.set("smtp_sasl_tls_security_options", "noanonymous", KeyRelayAuth)
		if s.Get(KeyTLSClientLevel, "") != "none" {
			// Manual 14.7.1: encrypt towards an authenticated relay.
			level = "encrypt"
		}
		files = append(files, File{Path: authMap, Mode: 0o600, Postmap: "hash",
			Data: []byte(relay + " " + pf.RelayCredentials + "\n")})
	}
	m.set("smtp_tls_security_level", level, KeyTLSClientLevel)

	// 14.7.2 message size
	m.section("14.7.2 message size")
	if v := s.Get(KeyMessageSizeLimit, ""); v == "" {
		m.comment(fmt.Sprintf("message_size_limit = %d (Postfix's default)", PostfixDefaultMessageSizeLimit))
	} else if n, err := strconv.ParseUint(v, 10, 63); err != nil {
		bad(KeyMessageSizeLimit, "want a size in bytes (0: no limit)")
	} else {
		m.set("message_size_limit", strconv.FormatUint(n, 10), KeyMessageSizeLimit)
	}
	// Dovecot keeps the quota: no mailbox limit may undercut the message limit.
	m.set("mailbox_size_limit", "0", "")
	m.set("virtual_mailbox_limit", "0", "")

	// 14.7.3 archive copy
	m.section("14.7.3 archive copy")
	if a := strings.ToLower(s.Get(KeyArchiveFolder, "")); a != "" {
		if err := checkArchive(a, pf.Directory); err != "" {
			bad(KeyArchiveFolder, err)
		}
		m.set("always_bcc", a, KeyArchiveFolder)
	}

	// 14.7.4 soft bounce
	m.section("14.7.4 soft bounce")
	if boolean(KeySoftBounce) {
		m.set("soft_bounce", "yes", KeySoftBounce)
	}

	// 14.7.5 SMTP server, TLS, SASL through Dovecot's auth
	m.section("14.7.5 SMTP server: TLS, and SASL through Dovecot's auth")
	m.set("smtpd_tls_cert_file", pf.TLSCert, "postfix.tls_cert")
	m.set("smtpd_tls_key_file", pf.TLSKey, "postfix.tls_key")
	m.set("smtpd_tls_security_level", "may", "")
	m.set("smtpd_sasl_type", "dovecot", "")
	m.set("smtpd_sasl_path", pf.AuthPath, "dovecot.auth_addr")
	m.set("smtpd_sasl_auth_enable", "no", "")
	m.set("smtpd_sasl_security_options", "noanonymous", "")
	m.set("broken_sasl_auth_clients", "yes", "")
	m.set("smtpd_relay_restrictions", "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination", "")
	m.set("smtpd_recipient_restrictions", "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination", "")

	// 14.7.6 postscreen
	m.section("14.7.6 postscreen")
	postscreen := boolean(KeyPostscreen)
	m.set("postscreen_access_list", s.Get(PrefixPostscreen+"access_list",
		"permit_mynetworks, cidr:"+filepath.Join(pf.ConfigDir, "postscreen_access.cidr")), PrefixPostscreen+"access_list")
	known := map[string]bool{KeyPostscreen: true, PrefixPostscreen + "access_list": true}
	for _, d := range postscreenDefaults {
		key := PrefixPostscreen + d.key
		known[key] = true
		m.set(d.param, s.Get(key, d.def), key)
	}
	for _, key := range slices.Sorted(maps.Keys(s)) {
		rest, ok := strings.CutPrefix(key, PrefixPostscreen)
		if !ok || known[key] {
			continue
		}
		param := "postscreen_" + strings.ReplaceAll(rest, "/", "_")
		if !paramRE.MatchString(param) {
			bad(key, "not a postscreen parameter")
			continue
		}
		m.set(param, s[key], key)
	}
	files = append(files, File{Path: filepath.Join(pf.ConfigDir, "postscreen_access.cidr"), Mode: 0o644, Seed: true,
		Data: []byte("# postscreen_access_list's own entries (the administrator's; mailsync creates it empty)\n")})

	// 14.7.8 maps
	m.section("14.7.8 mailsync's maps, Dovecot's LMTP, the expansion limit")
	table := func(name string) string { return pf.MapType + ":" + filepath.Join(pf.MapDir, name) }
	m.set("virtual_alias_maps", table("virtual_alias"), "postfix.map_dir")
	m.set("virtual_mailbox_maps", table("virtual_mailbox"), "postfix.map_dir")
	m.set("virtual_mailbox_domains", table("virtual_domains"), "postfix.map_dir")
	m.set("transport_maps", table("transport"), "postfix.map_dir")
	m.set("virtual_transport", "lmtp:"+pf.LMTP, "dovecot.lmtp_addr")
	limit := s.Get(KeyExpansionLimit, "1000")
	if n, err := strconv.Atoi(limit); err != nil || n < 1 {
		bad(KeyExpansionLimit, "want a positive number")
	}
	m.set("virtual_alias_expansion_limit", limit, KeyExpansionLimit)

	// master.cf
	opts := map[string][]string{}
	for _, key := range slices.Sorted(maps.Keys(s)) {
		rest, ok := strings.CutPrefix(key, PrefixMasterOptions)
		if !ok {
			continue
		}
		svc, param, ok := strings.Cut(rest, "/")
		if !ok || !paramRE.MatchString(param) || (svc != "smtp" && svc != "submission" && svc != "smtps") {
			bad(key, "want "+PrefixMasterOptions+"<smtp|submission|smtps>/<parameter>")
			continue
		}
		if strings.ContainsAny(s[key], " \t") {
			bad(key, "a master.cf option value has no blanks (use commas)")
			continue
		}
		opts[svc] = append(opts[svc], param+"="+s[key])
	}
	// Port 25: no authentication unless the variable says so (14.7.5).
	smtpOpts := append([]string{"smtpd_sasl_auth_enable=no"}, opts["smtp"]...)
	if _, ok := s[PrefixMasterOptions+"smtp/smtpd_sasl_auth_enable"]; ok {
		boolean(PrefixMasterOptions + "smtp/smtpd_sasl_auth_enable")
		smtpOpts = opts["smtp"]
	}
	mc := &cf{}
	mc.comment("Rendered by `mailsync configure` (manual 14.7.5, 14.7.6). Changes here are")
	mc.comment("overwritten: put them into master.cf.local.")
	mc.comment("service type  private unpriv  chroot  wakeup  maxproc command + args")
	if postscreen {
		mc.service(pf.SMTP, "inet", "n", "-", "n", "-", "1", "postscreen")
		mc.service("smtpd", "pass", "-", "-", "n", "-", "-", "smtpd", smtpOpts...)
		mc.service("dnsblog", "unix", "-", "-", "n", "-", "0", "dnsblog")
		mc.service("tlsproxy", "unix", "-", "-", "n", "-", "0", "tlsproxy")
	} else {
		mc.service(pf.SMTP, "inet", "n", "-", "n", "-", "-", "smtpd", smtpOpts...)
	}
	submit := []string{"smtpd_sasl_auth_enable=yes", "smtpd_client_restrictions=permit_sasl_authenticated,reject",
		"smtpd_relay_restrictions=permit_sasl_authenticated,reject", "smtpd_recipient_restrictions=permit_sasl_authenticated,reject"}
	mc.service(pf.Submission, "inet", "n", "-", "n", "-", "-", "smtpd",
		append(append([]string{"syslog_name=postfix/submission", "smtpd_tls_security_level=encrypt", "smtpd_tls_auth_only=yes"},
			submit...), opts["submission"]...)...)
	mc.service(pf.SMTPS, "inet", "n", "-", "n", "-", "-", "smtpd",
		append(append([]string{"syslog_name=postfix/smtps", "smtpd_tls_wrappermode=yes"}, submit...), opts["smtps"]...)...)
	for _, l := range standardServices {
		mc.service(l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7])
	}

	mainWarn, err := appendLocal(m, filepath.Join(pf.ConfigDir, "main.cf"), pf.MainCFLocal, parseParams)
	if err != nil {
		errs = append(errs, err)
	}
	masterWarn, err := appendLocal(mc, filepath.Join(pf.ConfigDir, "master.cf"), pf.MasterCFLocal, parseServices)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	files = append([]File{
		{Path: filepath.Join(pf.ConfigDir, "master.cf"), Data: mc.b.Bytes(), Mode: 0o644},
		{Path: filepath.Join(pf.ConfigDir, "main.cf"), Data: m.b.Bytes(), Mode: 0o644},
	}, files...)
	bin := pf.Binary
	return &Product{
		Name:     "postfix",
		Dir:      pf.ConfigDir,
		Files:    files,
		Warnings: append(mainWarn, masterWarn...),
		Postmap:  pf.Postmap, PostmapConfigDir: pf.ConfigDir,
		Validate: func(ctx context.Context, dir string) error {
			return postfixCheck(ctx, bin, dir)
		},
		Reload: func(ctx context.Context) error { return ReloadPostfix(ctx, bin, pf.ConfigDir) },
	}, nil
}

func checkArchive(addr string, d *Directory) string {
	if !addressRE.MatchString(addr) {
		return "want an email address"
	}
	_, domain, _ := strings.Cut(addr, "@")
	if d == nil {
		return "cannot be checked: the directory was not read"
	}
	if d.Domains[domain] && !d.Addresses[addr] {
		return "no such address in the directory (its domain is hosted here; manual 14.7.3: the address must exist)"
	}
	return ""
}

// standardServices are Postfix's own services (Debian's master.cf), run
// without chroot like upstream's default but for the SMTP client.
var standardServices = [][8]string{
	{"pickup", "unix", "n", "-", "n", "60", "1", "pickup"},
	{"cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"},
	{"qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"},
	{"tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"},
	{"rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"},
	{"bounce", "unix", "-", "-", "n", "-", "0", "bounce"},
	{"defer", "unix", "-", "-", "n", "-", "0", "bounce"},
	{"trace", "unix", "-", "-", "n", "-", "0", "bounce"},
	{"verify", "unix", "-", "-", "n", "-", "1", "verify"},
	{"flush", "unix", "n", "-", "n", "1000?", "0", "flush"},
	{"proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"},
	{"proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"},
	// The SMTP client runs chrooted in the queue directory, as in Debian's
	// master.cf: it resolves hosts with the queue's etc/ (copied there by
	// Debian's postfix start).
	{"smtp", "unix", "-", "-", "y", "-", "-", "smtp"},
	{"relay", "unix", "-", "-", "y", "-", "-", "smtp"},
	{"showq", "unix", "n", "-", "n", "-", "-", "showq"},
	{"error", "unix", "-", "-", "n", "-", "-", "error"},
	{"retry", "unix", "-", "-", "n", "-", "-", "error"},
	{"discard", "unix", "-", "-", "n", "-", "-", "discard"},
	{"local", "unix", "-", "n", "n", "-", "-", "local"},
	{"virtual", "unix", "-", "n", "n", "-", "-", "virtual"},
	{"lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"},
	{"anvil", "unix", "-", "-", "n", "-", "1", "anvil"},
	{"scache", "unix", "-", "-", "n", "-", "1", "scache"},
	{"postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"},
}

// cf accumulates a config file and remembers where each name was set.
type cf struct {
	b     bytes.Buffer
	line  int
	where map[string]int // parameter or service → line
}

func (c *cf) emit(s string) {
	c.b.WriteString(s)
	c.b.WriteByte('\n')
	c.line++
}

func (c *cf) comment(s string) { c.emit("# " + s) }

func (c *cf) section(s string) {
	c.emit("")
	c.emit("# --- " + s)
}

func (c *cf) note(name string) {
	if c.where == nil {
		c.where = map[string]int{}
	}
	c.where[name] = c.line + 1
}

// set writes "name = value"; from names the setting it comes from.
func (c *cf) set(name, value, from string) {
	c.note(name)
	line := name + " ="
	if value != "" {
		line += " " + value
	}
	if from != "" && strings.Contains(from, "/") {
		c.emit("# from " + from)
		c.where[name] = c.line + 1
	}
	c.emit(line)
}

func (c *cf) service(name, typ, private, unpriv, chroot, wakeup, maxproc, command string, opts ...string) {
	c.note(name + "/" + typ)
	c.emit(fmt.Sprintf("%-11s %-10s %-7s %-7s %-7s %-7s %-7s %s", name, typ, private, unpriv, chroot, wakeup, maxproc, command))
	for _, o := range opts {
		c.emit("  -o " + o)
	}
}

// appendLocal appends the administrator's file path to the rendered file
// name (manual 14.7.7, UCS's 99_local) and reports every name it sets that the rendered part set
// already, naming both places.
func appendLocal(c *cf, name, path string, names func([]byte) map[string]int) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(data) == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var warns []string
	local := names(data)
	for _, k := range slices.Sorted(maps.Keys(local)) {
		if l, ok := c.where[k]; ok {
			warns = append(warns, fmt.Sprintf("%s line %d sets %s, already set in %s line %d (%s's value wins)",
				path, local[k], k, name, l, filepath.Base(path)))
		}
	}
	c.emit("")
	c.emit("# The following section is included from the file " + path + ".")
	for _, l := range strings.SplitAfter(string(data), "\n") {
		if l != "" {
			c.b.WriteString(l)
			if !strings.HasSuffix(l, "\n") {
				c.b.WriteByte('\n')
			}
			c.line++
		}
	}
	c.emit("# --- end of " + path + " ---")
	return warns, nil
}

// parseParams returns the parameters a main.cf fragment sets, with the
// line of their last setting.
func parseParams(data []byte) map[string]int {
	out := map[string]int{}
	for i, l := range strings.Split(string(data), "\n") {
		if l == "" || l[0] == '#' || l[0] == ' ' || l[0] == '\t' {
			continue
		}
		if k, _, ok := strings.Cut(l, "="); ok {
			out[strings.TrimSpace(k)] = i + 1
		}
	}
	return out
}

// parseServices returns the services (name/type) a master.cf fragment
// defines.
func parseServices(data []byte) map[string]int {
	out := map[string]int{}
	for i, l := range strings.Split(string(data), "\n") {
		if l == "" || l[0] == '#' || l[0] == ' ' || l[0] == '\t' {
			continue
		}
		if f := strings.Fields(l); len(f) >= 2 {
			out[f[0]+"/"+f[1]] = i + 1
		}
	}
	return out
}

// postfixCheck runs `postfix -c dir check` on a staged copy. Postfix
// writes its complaints to the mail log, and to stderr only when that is a
// terminal; `postconf -n` first catches what it can say on stderr.
func postfixCheck(ctx context.Context, bin, dir string) error {
	postconf := filepath.Join(filepath.Dir(bin), "postconf")
	out, err := exec.CommandContext(ctx, postconf, "-c", dir, "-n").CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("warning:")) || bytes.Contains(out, []byte("fatal:")) {
		var msgs []string
		for _, l := range strings.Split(string(out), "\n") {
			// A parameter set twice is main.cf.local's right (manual
			// 14.7.7); the renderer reports it as a warning of its own.
			if strings.Contains(l, "overriding earlier entry") {
				continue
			}
			if strings.Contains(l, "warning:") || strings.Contains(l, "fatal:") || strings.Contains(l, "error:") {
				msgs = append(msgs, strings.TrimSpace(l))
			}
		}
		if err != nil || len(msgs) > 0 {
			return fmt.Errorf("postconf -c %s -n: %v %s", dir, err, strings.Join(msgs, "; "))
		}
	}
	out, err = exec.CommandContext(ctx, postconf, "-c", dir, "-M").CombinedOutput()
	if err != nil {
		return fmt.Errorf("postconf -c %s -M: %v: %s", dir, err, strings.TrimSpace(string(out)))
	}
	if out, err := runOnTTY(ctx, bin, "-c", dir, "check"); err != nil {
		return fmt.Errorf("postfix -c %s check: %v: %s", dir, err, out)
	}
	return nil
}

// ReloadPostfix makes the Postfix of config dir read its configuration and
// reopen its tables (`postfix reload`); nothing when it is not running.
func ReloadPostfix(ctx context.Context, bin, dir string) error {
	if !PostfixRunning(ctx, bin, dir) {
		return nil
	}
	return postfixCmd(ctx, bin, dir, "reload")
}

// PostfixRunning reports whether the Postfix of config dir runs
// (`postfix status`).
func PostfixRunning(ctx context.Context, bin, dir string) bool {
	return exec.CommandContext(ctx, bin, "-c", dir, "status").Run() == nil
}

func postfixCmd(ctx context.Context, bin, dir, verb string) error {
	if out, err := runOnTTY(ctx, bin, "-c", dir, verb); err != nil {
		return fmt.Errorf("postfix -c %s %s: %w: %s", dir, verb, err, out)
	}
	return nil
}
