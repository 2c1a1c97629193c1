package testenv

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"
)

const dovecotPkgs = "dovecot-core dovecot-imapd dovecot-lmtpd dovecot-ldap"

// DovecotOptions tune StartDovecot. The zero value is UCS's default setup.
type DovecotOptions struct {
	// FQDN of this mail host (default "mail.example.org"): users whose
	// univentionMailHomeServer is set to another host are unknown here.
	FQDN string
	// SeparateIndex puts indexes under IndexRoot/<domain>/<localpart>, like
	// UCR mail/dovecot/location/separate_index=yes.
	SeparateIndex bool
	// AuthCacheTTL and AuthCacheNegativeTTL default to UCS's 5 and 1 minutes
	// (mail/dovecot/auth/cache_ttl, cache_negative_ttl), so a test sees a
	// stale positive or negative entry until the cache is flushed.
	AuthCacheTTL, AuthCacheNegativeTTL time.Duration
	// DoveadmPassword, when set, opens doveadm's own tcp protocol on a free
	// port of 127.0.0.1 (Dovecot.DoveadmTCP) with this doveadm_password,
	// the way two hosts run dsync against each other (move_on_homeserver_change).
	DoveadmPassword string
	// MovingUserdb adds a second userdb, for doveadm only, reading the
	// passwd-file Dovecot.MovingPasswd that mailsync maintains while a
	// user's mail moves away from this host (README, "Moving mail between
	// home servers"). Created empty.
	MovingUserdb bool
	// DoveadmTLS serves the doveadm HTTP API over HTTPS with a certificate
	// of this CA (DoveadmURL is then https://).
	DoveadmTLS *CA
	// ConfFiles are written to ConfDir/conf.d before the start, keyed by
	// file name: fragments rendered by mailsync configure. dovecot.conf
	// includes conf.d/*.conf last, so they override the settings above it,
	// as on a packaged Dovecot.
	ConfFiles map[string][]byte
	// SharedFolders sets Dovecot up for UCS's shared IMAP folders
	// (reference §2): the acl plugin (vfile, a shared-mailbox dict), the
	// "shared/<address>/" namespace, and folders with an address and this
	// host as univentionMailHomeServer in the userdb (no passdb: a folder
	// cannot log in), so mail for a folder's address is delivered over
	// LMTP into its private mailbox, Dovecot.Home(address).
	SharedFolders bool
	// NoFile, when set, is the master's fd limit (ulimit -n), as a
	// systemd LimitNOFILE would set it; else the test's own limit.
	NoFile uint64
}

// Dovecot is a running Dovecot 2.3 with an LDAP passdb/userdb on the test
// slapd (UCS's dovecot-ldap.conf.ext semantics, reference §1.8), IMAP, LMTP
// and the doveadm HTTP API on 127.0.0.1, and a master user.
//
// Mail processes run as the Debian system user "mail" (uid/gid 8, present on
// every Debian system; UCS uses a "dovemail" user created by its package).
// The master runs as root like a packaged Dovecot; login processes use the
// packaged "dovenull"/"dovecot" users. Spool and IndexRoot are owned by mail.
type Dovecot struct {
	IMAPAddr   string // 127.0.0.1:port
	LMTPAddr   string // 127.0.0.1:port
	DoveadmURL string // http://127.0.0.1:port/doveadm/v1
	APIKey     string // doveadm_api_key in clear (the client base64-encodes it)
	MasterUser string // log in as "<user>*<MasterUser>"
	MasterPass string
	Spool      string // mail_home = Spool/%Ld/%Ln, maildir at <home>/Maildir
	IndexRoot  string // index root when SeparateIndex (else unused but created)
	// PublicHome is the root of the public folders' maildirs (mailsync's
	// dovecot.public_home), owned by mail; its namespaces are the
	// dovecot-public fragment mailsync installs into ConfDir/conf.d.
	PublicHome string
	FQDN       string
	MailHome   string // the mail_home template, e.g. "/tmp/dovecot-1/spool/%Ld/%Ln"
	UID, GID   int    // owner of mail files
	Dir        string // config, logs, base_dir; kept when the test failed
	LogPath    string
	// ConfDir holds dovecot.conf and conf.d/, like /etc/dovecot; ConfPath
	// is its dovecot.conf (doveconf -c, doveadm -c).
	ConfDir, ConfPath string
	// DoveadmTCP is host:port of doveadm's tcp listener (with
	// DovecotOptions.DoveadmPassword), else "".
	DoveadmTCP string
	// AuthAddr is host:port of the auth service's client listener, where
	// Postfix's smtpd asks Dovecot to authenticate SMTP clients
	// (smtpd_sasl_type = dovecot, smtpd_sasl_path = inet:AuthAddr).
	AuthAddr string
	// MovingPasswd is the doveadm-only passwd-file userdb (with
	// DovecotOptions.MovingUserdb), else "".
	MovingPasswd string

	binary  string
	noFile  uint64
	ports   dovecotPorts
	tls     *CA
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

type dovecotPorts struct{ IMAP, LMTP, HTTP, TCP, Auth int }

// StartDovecot starts Dovecot against the directory ldap (slapd or 389-DS)
// and waits until IMAP, LMTP and the doveadm API answer. It is stopped in
// t.Cleanup; Dir is removed unless the test failed.
func StartDovecot(t testing.TB, ldap LDAPServer, opts DovecotOptions) *Dovecot {
	t.Helper()
	bin := Require(t, "dovecot", dovecotPkgs)
	for _, f := range []string{"/usr/lib/dovecot/imap", "/usr/lib/dovecot/lmtp", "/usr/lib/dovecot/modules/auth/libauthdb_ldap.so"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s missing: install it with `apt-get install -y %s`", f, dovecotPkgs)
		}
	}
	if opts.FQDN == "" {
		opts.FQDN = "mail.example.org"
	}
	if opts.AuthCacheTTL == 0 {
		opts.AuthCacheTTL = 5 * time.Minute
	}
	if opts.AuthCacheNegativeTTL == 0 {
		opts.AuthCacheNegativeTTL = time.Minute
	}
	mail, err := user.Lookup("mail")
	if err != nil {
		t.Fatalf("dovecot: system user mail: %v", err)
	}
	uid, _ := strconv.Atoi(mail.Uid)
	gid, _ := strconv.Atoi(mail.Gid)

	// Not t.TempDir: the mail user must traverse it, unix socket paths under
	// base_dir must stay short (108 bytes), and a failed test keeps it.
	dir, err := os.MkdirTemp("", "dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &Dovecot{
		tls:        opts.DoveadmTLS,
		APIKey:     randomHex(t, 16),
		MasterUser: "dovecotadmin", // as UCS's postinst names it
		MasterPass: randomHex(t, 12),
		Spool:      filepath.Join(dir, "spool"),
		IndexRoot:  filepath.Join(dir, "index"),
		PublicHome: filepath.Join(dir, "public"),
		FQDN:       opts.FQDN,
		UID:        uid,
		GID:        gid,
		Dir:        dir,
		LogPath:    filepath.Join(dir, "dovecot.log"),
		ConfDir:    filepath.Join(dir, "conf"),
		binary:     bin,
		noFile:     opts.NoFile,
	}
	d.ConfPath = filepath.Join(d.ConfDir, "dovecot.conf")
	d.MailHome = d.Spool + "/%Ld/%Ln"
	t.Cleanup(func() {
		d.stop(false)
		if t.Failed() {
			t.Logf("dovecot: keeping %s (log %s)", dir, d.LogPath)
			return
		}
		os.RemoveAll(dir)
	})
	owned := []string{d.Spool, d.IndexRoot, d.PublicHome}
	if opts.SharedFolders {
		// The mail processes write the shared-mailbox dict.
		owned = append(owned, filepath.Join(dir, "acl"))
	}
	for _, p := range owned {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"run", "state", "conf", "conf/conf.d"} {
		if err := os.Mkdir(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range opts.ConfFiles {
		if filepath.Base(name) != name {
			t.Fatalf("dovecot: conf file %q: want a file name in conf.d", name)
		}
		writeFile(t, filepath.Join(d.ConfDir, "conf.d", name), 0o644, string(data))
	}
	if opts.MovingUserdb {
		d.MovingPasswd = filepath.Join(dir, "moving.passwd")
		writeFile(t, d.MovingPasswd, 0o644, "")
	}
	writeFile(t, filepath.Join(dir, "master-users"), 0o640,
		fmt.Sprintf("%s:{PLAIN}%s\n", d.MasterUser, d.MasterPass))
	if err := os.Chown(filepath.Join(dir, "master-users"), 0, dovecotGID(t)); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "dovecot-ldap.conf.ext"), 0o600, render(t, dovecotLDAPConf, map[string]any{
		"URL": ldap.Endpoint().URL, "BaseDN": ldap.Endpoint().BaseDN, "AdminDN": ldap.Endpoint().AdminDN, "AdminPW": ldap.Endpoint().AdminPW,
		"FQDN": escapeLDAPFilter(opts.FQDN), "Shared": opts.SharedFolders, "UID": uid, "GID": gid,
	}))

	// Free ports are probed, so another process can take one before Dovecot
	// binds it; then pick again.
	for attempt := 1; ; attempt++ {
		d.ports = dovecotPorts{IMAP: FreePort(t), LMTP: FreePort(t), HTTP: FreePort(t), Auth: FreePort(t)}
		d.AuthAddr = fmt.Sprintf("127.0.0.1:%d", d.ports.Auth)
		if opts.DoveadmPassword != "" {
			d.ports.TCP = FreePort(t)
			d.DoveadmTCP = fmt.Sprintf("127.0.0.1:%d", d.ports.TCP)
		}
		d.IMAPAddr = fmt.Sprintf("127.0.0.1:%d", d.ports.IMAP)
		d.LMTPAddr = fmt.Sprintf("127.0.0.1:%d", d.ports.LMTP)
		scheme := "http"
		if opts.DoveadmTLS != nil {
			scheme = "https"
		}
		d.DoveadmURL = fmt.Sprintf("%s://127.0.0.1:%d/doveadm/v1", scheme, d.ports.HTTP)
		writeFile(t, d.ConfPath, 0o644, render(t, dovecotConf, map[string]any{
			"D": d, "Ports": d.ports, "Opts": opts,
			"CacheTTL":    fmt.Sprintf("%d secs", int(opts.AuthCacheTTL.Seconds())),
			"NegCacheTTL": fmt.Sprintf("%d secs", int(opts.AuthCacheNegativeTTL.Seconds())),
		}))
		err := d.start()
		if err == nil {
			return d
		}
		if attempt < 3 && strings.Contains(err.Error(), "Address already in use") {
			continue
		}
		t.Fatalf("start dovecot: %v", err)
	}
}

// Start starts a stopped Dovecot again on the same ports, with the same data.
func (d *Dovecot) Start(t testing.TB) {
	t.Helper()
	if d.cmd != nil {
		t.Fatalf("dovecot already running")
	}
	if err := d.start(); err != nil {
		t.Fatalf("restart dovecot: %v", err)
	}
}

// Stop stops Dovecot and waits until its ports refuse connections, so a
// client sees "connection refused" right away.
func (d *Dovecot) Stop(t testing.TB) {
	t.Helper()
	if err := d.stop(true); err != nil {
		t.Fatalf("stop dovecot: %v", err)
	}
}

func (d *Dovecot) start() error {
	logf, err := os.OpenFile(filepath.Join(d.Dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(d.binary, "-c", d.ConfPath, "-F")
	if d.noFile != 0 {
		// The shell sets the limit and becomes Dovecot (same pid), as
		// systemd's LimitNOFILE would start it.
		cmd = exec.Command("/bin/sh", "-c", `ulimit -n "$1" && exec "$2" -c "$3" -F`, "sh",
			strconv.FormatUint(d.noFile, 10), d.binary, d.ConfPath)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C on `go test` must not reach it before
	// Cleanup does, and Cleanup can signal every child if the master is gone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	d.cmd, d.done = cmd, done
	go func() { d.waitErr = cmd.Wait(); close(done) }()

	deadline := time.Now().Add(15 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			d.cmd = nil
			return fmt.Errorf("dovecot exited: %v\n%s", d.waitErr, d.logTail())
		default:
		}
		if lastErr = d.ready(); lastErr == nil {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.stop(false)
	return fmt.Errorf("dovecot not ready after 15s: %v\n%s", lastErr, d.logTail())
}

// ready checks each protocol's greeting, not just the TCP connect: the master
// accepts before the login and auth processes are up.
func (d *Dovecot) ready() error {
	if err := greeting(d.IMAPAddr, "* OK"); err != nil {
		return fmt.Errorf("imap: %w", err)
	}
	if err := greeting(d.LMTPAddr, "220 "); err != nil {
		return fmt.Errorf("lmtp: %w", err)
	}
	req, _ := http.NewRequest(http.MethodGet, d.DoveadmURL, nil)
	req.Header.Set("Authorization", "X-Dovecot-API "+base64.StdEncoding.EncodeToString([]byte(d.APIKey)))
	client := &http.Client{Timeout: time.Second}
	if d.tls != nil {
		client.Transport = &http.Transport{TLSClientConfig: d.tls.ClientTLS()}
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("doveadm http: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("doveadm http: %s", resp.Status)
	}
	if d.DoveadmTCP != "" {
		c, err := net.DialTimeout("tcp", d.DoveadmTCP, time.Second)
		if err != nil {
			return fmt.Errorf("doveadm tcp: %w", err)
		}
		c.Close()
	}
	return nil
}

func greeting(addr, want string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, want) {
		return fmt.Errorf("greeting %q", line)
	}
	return nil
}

// stop ends Dovecot: gracefully (SIGTERM; the master takes about a second
// to collect its children) or, in Cleanup where the data is thrown away, by
// killing the whole process group at once.
func (d *Dovecot) stop(graceful bool) error {
	if d.cmd == nil {
		return nil
	}
	pid := d.cmd.Process.Pid
	if graceful {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
	} else {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-d.done
	}
	d.cmd = nil
	// Children may outlive the master a moment (a login process with
	// clients queued for a busy mail service), holding listeners and unix
	// sockets a new start would take for a running Dovecot: wait until the
	// process group is gone, killing it after a deadline.
	gone := func(within time.Duration) bool {
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if err := syscall.Kill(-pid, 0); errors.Is(err, syscall.ESRCH) {
				return true
			}
		}
		return false
	}
	if !gone(5 * time.Second) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		// Zombies nobody reaps would never go: the listeners decide below.
		gone(2 * time.Second)
	}
	deadline := time.Now().Add(5 * time.Second)
	killed := false
	addrs := []string{d.IMAPAddr, d.LMTPAddr, fmt.Sprintf("127.0.0.1:%d", d.ports.HTTP), d.AuthAddr}
	if d.DoveadmTCP != "" {
		addrs = append(addrs, d.DoveadmTCP)
	}
	for _, addr := range addrs {
		for {
			c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			if err != nil {
				break
			}
			c.Close()
			if time.Now().After(deadline) {
				if killed {
					return fmt.Errorf("%s still accepting after dovecot exited and its processes were killed", addr)
				}
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				killed, deadline = true, time.Now().Add(2*time.Second)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

func (d *Dovecot) logTail() string {
	var b bytes.Buffer
	for _, f := range []string{filepath.Join(d.Dir, "stderr.log"), d.LogPath} {
		data, _ := os.ReadFile(f)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", f, strings.Join(lines, "\n"))
	}
	return b.String()
}

// Log returns the last lines of Dovecot's log, for failure messages.
func (d *Dovecot) Log() string { return d.logTail() }

// Home returns the home directory Dovecot uses for address (mail_home with
// %Ld and %Ln expanded, lowercased like Dovecot does).
func (d *Dovecot) Home(address string) string {
	local, domain, _ := strings.Cut(strings.ToLower(address), "@")
	return filepath.Join(d.Spool, domain, local)
}

func dovecotGID(t testing.TB) int {
	g, err := user.LookupGroup("dovecot")
	if err != nil {
		t.Fatalf("dovecot: group dovecot (from dovecot-core): %v; `apt-get install -y %s`", err, dovecotPkgs)
	}
	n, _ := strconv.Atoi(g.Gid)
	return n
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t testing.TB, path string, mode os.FileMode, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func render(t testing.TB, tmpl string, data any) string {
	t.Helper()
	var b bytes.Buffer
	if err := template.Must(template.New("").Parse(tmpl)).Execute(&b, data); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// escapeLDAPFilter escapes a value for an LDAP filter (RFC 4515) and for
// Dovecot's %-expansion.
func escapeLDAPFilter(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch c {
		case '*', '(', ')', '\\', 0:
			fmt.Fprintf(&b, "\\%02x", c)
		case '%':
			b.WriteString("%%")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// dovecotConf is a complete configuration: nothing from /etc/dovecot is read.
const dovecotConf = `# generated by mailsync internal/testenv
base_dir = {{.D.Dir}}/run
state_dir = {{.D.Dir}}/state
instance_name = mailsync-test
listen = 127.0.0.1
protocols = imap lmtp
{{- if .Opts.DoveadmTLS}}
ssl = yes
ssl_cert = <{{.Opts.DoveadmTLS.ServerCert}}
ssl_key = <{{.Opts.DoveadmTLS.ServerKey}}
{{- else}}
ssl = no
{{- end}}
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {{.D.LogPath}}
info_log_path = {{.D.LogPath}}
# UCS: mail/dovecot/auth/cache_* (10-auth.conf)
auth_cache_size = 10M
auth_cache_ttl = {{.CacheTTL}}
auth_cache_negative_ttl = {{.NegCacheTTL}}
auth_master_user_separator = *
auth_failure_delay = 0
# Mail processes run as "mail" (uid {{.D.UID}}); UCS uses "dovemail".
first_valid_uid = {{.D.UID}}
last_valid_uid = {{.D.UID}}
first_valid_gid = {{.D.GID}}
last_valid_gid = {{.D.GID}}
mail_uid = {{.D.UID}}
mail_gid = {{.D.GID}}
# UCS 10-mail.conf (reference §1.5)
mail_home = {{.D.MailHome}}
mail_location = maildir:~/Maildir{{if .Opts.SeparateIndex}}:INDEX={{.D.IndexRoot}}/%Ld/%Ln{{end}}
mail_fsync = never
doveadm_api_key = {{.D.APIKey}}
{{- if .Opts.SharedFolders}}
# UCS 10-mail.conf: shared folders with an address are private mailboxes
# others see under shared/<address>/, as their ACLs allow.
namespace inbox {
  inbox = yes
  separator = /
  prefix =
}
namespace shared {
  type = shared
  separator = /
  prefix = shared/%%u/
  location = maildir:%%h/Maildir:INDEXPVT=~/Maildir/shared/%%u
  subscriptions = no
  list = children
}
mail_plugins = $mail_plugins acl
protocol imap {
  mail_plugins = $mail_plugins imap_acl
}
plugin {
  acl = vfile
  acl_shared_dict = file:{{.D.Dir}}/acl/shared-mailboxes.db
  # A master login (tests read mail as <user>*dovecotadmin) has the user's
  # own rights, not the master user's.
  acl_user = %u
}
{{- end}}
{{- if .Opts.DoveadmPassword}}
# Shared by every mail host: dsync between them over doveadm's tcp protocol.
doveadm_password = {{.Opts.DoveadmPassword}}
doveadm_port = {{.Ports.TCP}}
{{- end}}

passdb {
  driver = passwd-file
  args = {{.D.Dir}}/master-users
  master = yes
}
passdb {
  driver = ldap
  args = {{.D.Dir}}/dovecot-ldap.conf.ext
}
userdb {
  driver = ldap
  args = {{.D.Dir}}/dovecot-ldap.conf.ext
}
{{- if .D.MovingPasswd}}
# mailsync's users whose mail is moving away from this host: resolvable by
# doveadm (dsync, status) only, so IMAP and LMTP refuse them as before.
protocol doveadm {
  userdb {
    driver = passwd-file
    args = {{.D.MovingPasswd}}
  }
}
{{- end}}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = {{.Ports.IMAP}}
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = {{.Ports.LMTP}}
  }
  unix_listener lmtp {
    mode = 0600
  }
}
# Postfix's smtpd authenticates SMTP clients here (SASL through Dovecot's
# auth, as UCS's smtpd_sasl_type = dovecot).
service auth {
  inet_listener {
    address = 127.0.0.1
    port = {{.Ports.Auth}}
  }
}
# Tests log in wrongly on purpose, all from 127.0.0.1: without its socket,
# auth applies no per-IP penalty (2 s, then up to 15 s, per failure).
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service doveadm {
  inet_listener http {
    address = 127.0.0.1
    port = {{.Ports.HTTP}}
{{- if .Opts.DoveadmTLS}}
    ssl = yes
{{- end}}
  }
{{- if .Ports.TCP}}
  inet_listener {
    address = 127.0.0.1
    port = {{.Ports.TCP}}
  }
{{- end}}
}
protocol lmtp {
  # LMTP rcpt addresses are looked up as given; no domain stripping.
  lmtp_save_to_detail_mailbox = no
}

# Last, like Debian's dovecot.conf: fragments override what is above.
!include_try conf.d/*.conf
`

// dovecotLDAPConf follows UCS's dovecot-ldap.conf.ext (reference §1.8): a
// user is found by mailPrimaryAddress (or by uid when the login is exactly
// the uid), only if univentionMailHomeServer is empty or this host; the
// Dovecot username is the mailPrimaryAddress. Departure from UCS 2.4's
// filter: it matches uid=%{user | username}, so "alice@any.domain" would log
// in as uid alice; here uid matches the whole login only, so an old address
// stops working after a rename. The home server matches with a trailing dot
// too, as mailsync compares host names as DNS names (package address); the
// attribute's caseIgnoreIA5Match already ignores case.
const dovecotLDAPConf = `uris = {{.URL}}
dn = {{.AdminDN}}
dnpass = {{.AdminPW}}
ldap_version = 3
base = {{.BaseDN}}
scope = subtree
deref = never
auth_bind = yes
{{- if .Shared}}
user_filter = (&(|(&(objectClass=univentionMail)(|(!(univentionMailHomeServer=*))(univentionMailHomeServer={{.FQDN}})(univentionMailHomeServer={{.FQDN}}.)))(&(objectClass=univentionMailSharedFolder)(|(univentionMailHomeServer={{.FQDN}})(univentionMailHomeServer={{.FQDN}}.))))(|(mailPrimaryAddress=%u)(&(uid=%u)(mailPrimaryAddress=*))))
{{- else}}
user_filter = (&(objectClass=univentionMail)(|(!(univentionMailHomeServer=*))(univentionMailHomeServer={{.FQDN}})(univentionMailHomeServer={{.FQDN}}.))(|(mailPrimaryAddress=%u)(&(uid=%u)(mailPrimaryAddress=*))))
{{- end}}
{{- if .Shared}}
# uid and gid in the reply: a mail process may look up another user (the
# owner of a shared folder) only for the uid it runs as.
user_attrs = =user=%{ldap:mailPrimaryAddress}, =uid={{.UID}}, =gid={{.GID}}
{{- else}}
user_attrs = =user=%{ldap:mailPrimaryAddress}
{{- end}}
pass_filter = (&(objectClass=univentionMail)(|(!(univentionMailHomeServer=*))(univentionMailHomeServer={{.FQDN}})(univentionMailHomeServer={{.FQDN}}.))(|(mailPrimaryAddress=%u)(&(uid=%u)(mailPrimaryAddress=*))))
pass_attrs = mailPrimaryAddress=user
{{- if .Shared}}
iterate_filter = (&(|(&(objectClass=univentionMail)(|(!(univentionMailHomeServer=*))(univentionMailHomeServer={{.FQDN}})(univentionMailHomeServer={{.FQDN}}.)))(&(objectClass=univentionMailSharedFolder)(|(univentionMailHomeServer={{.FQDN}})(univentionMailHomeServer={{.FQDN}}.))))(mailPrimaryAddress=*))
{{- else}}
iterate_filter = (&(objectClass=univentionMail)(|(!(univentionMailHomeServer=*))(univentionMailHomeServer={{.FQDN}})(univentionMailHomeServer={{.FQDN}}.))(mailPrimaryAddress=*))
{{- end}}
iterate_attrs = mailPrimaryAddress=user
`

// CPU is the CPU time Dovecot has used so far: the master, every service
// process it runs and every one it has reaped (GroupCPU).
func (d *Dovecot) CPU() time.Duration {
	if d.cmd == nil {
		return 0
	}
	return GroupCPU(d.cmd.Process.Pid)
}
