package testenv

import (
	"bufio"
	_ "embed"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
	"mailsync/listener"
)

//go:embed schema/99ucs-mail.ldif
var ucsMailSchema389 string

// DS389 is a running 389 Directory Server (Debian's 389-ds-base) created
// with `dscreate from-file`, every path below one temp prefix, listening on
// 127.0.0.1 only, with the UCS mail schema and the Content Synchronization
// plugin (RFC 4533) on top of the retro changelog.
//
// Creating an instance takes about 9 s, so a test package shares one: start
// it with NewDS389 from TestMain (or a sync.Once) and give each test its own
// subtree with Tree.
type DS389 struct {
	URL     string
	BaseDN  string // the subtree this view works in
	AdminDN string
	AdminPW string
	Port    int

	srv *ds389Server
}

type ds389Server struct {
	dir       string // the prefix
	instance  string
	configDir string
	pidFile   string
	suffix    string
	binary    string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	conn *ldap.Conn
}

// DS389Timings says where the start-up time went.
type DS389Timings struct {
	Create, Configure, Start time.Duration
}

// ds389Suffix is the database suffix; Tree views live below it.
const ds389Suffix = "dc=example,dc=org"

// NewDS389 creates an instance below dir (which it owns; Close removes
// nothing, the caller removes dir) and starts it. It is the TestMain form of
// StartDS389: no testing.TB is needed, errors are returned.
func NewDS389(dir string) (*DS389, DS389Timings, error) {
	var tm DS389Timings
	dscreate, err := lookBin("dscreate")
	if err != nil {
		return nil, tm, err
	}
	nsSlapd, err := lookBin("ns-slapd")
	if err != nil {
		return nil, tm, err
	}
	port, err := freePort()
	if err != nil {
		return nil, tm, err
	}
	s := &ds389Server{dir: dir, instance: "mailsync", suffix: ds389Suffix, binary: nsSlapd}
	s.configDir = filepath.Join(dir, "etc/dirsrv/slapd-"+s.instance)
	s.pidFile = filepath.Join(dir, "run/dirsrv/slapd-"+s.instance+".pid")

	t0 := time.Now()
	if err := s.create(dscreate); err != nil {
		return nil, tm, err
	}
	tm.Create = time.Since(t0)
	t0 = time.Now()
	if err := s.configure(port); err != nil {
		return nil, tm, err
	}
	tm.Configure = time.Since(t0)
	t0 = time.Now()
	d := &DS389{
		URL:     fmt.Sprintf("ldap://127.0.0.1:%d", port),
		BaseDN:  s.suffix,
		AdminDN: "cn=Directory Manager",
		AdminPW: "admin-secret",
		Port:    port,
		srv:     s,
	}
	if err := d.start(); err != nil {
		return nil, tm, err
	}
	tm.Start = time.Since(t0)
	return d, tm, nil
}

// StartDS389 creates and starts an instance of its own for one test,
// stopped by t.Cleanup. Prefer one shared instance per package.
func StartDS389(t testing.TB) *DS389 {
	t.Helper()
	Require(t, "dscreate", "389-ds-base")
	Require(t, "ns-slapd", "389-ds-base")
	d, _, err := NewDS389(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func lookBin(bin string) (string, error) {
	if p, err := exec.LookPath(bin); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		p := dir + "/" + bin
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install it with `apt-get install -y 389-ds-base` (or run `make test`, which installs it)", bin)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// create runs dscreate. lib389 finds an instance's paths through
// $PREFIX/share/dirsrv/inf/defaults.inf and $PREFIX/etc/dirsrv/slapd-NAME,
// so the prefix gets its own defaults.inf naming only paths below it, and the
// schema and config templates dscreate copies from sysconf_dir. The
// instance is created with port 0 (LDAPI only): nothing listens on a network
// address until configure has bound it to 127.0.0.1.
func (s *ds389Server) create(dscreate string) error {
	sys, err := os.ReadFile("/usr/share/dirsrv/inf/defaults.inf")
	if err != nil {
		return fmt.Errorf("read 389-DS defaults (apt-get install -y 389-ds-base): %w", err)
	}
	p := s.dir
	override := map[string]string{
		"with_systemd":    "0",
		"with_selinux":    "",
		"prefix":          p,
		"tmp_dir":         p + "/tmp",
		"sysconf_dir":     p + "/etc",
		"initconfig_dir":  p + "/etc/default",
		"config_dir":      p + "/etc/dirsrv/slapd-{instance_name}",
		"local_state_dir": p + "/var",
		"run_dir":         p + "/run/dirsrv",
		"ldapi":           p + "/run/slapd-{instance_name}.socket",
		"pid_file":        p + "/run/dirsrv/slapd-{instance_name}.pid",
		"inst_dir":        p + "/lib/dirsrv/slapd-{instance_name}",
		"tmpfiles_d":      p + "/etc/tmpfiles.d",
		"user":            "root",
		"group":           "root",
		"schema_dir":      p + "/etc/dirsrv/slapd-{instance_name}/schema",
		"cert_dir":        p + "/etc/dirsrv/slapd-{instance_name}",
		"lock_dir":        p + "/run/lock/dirsrv/slapd-{instance_name}",
		"log_dir":         p + "/log",
		"access_log":      p + "/log/access",
		"audit_log":       p + "/log/audit",
		"error_log":       p + "/log/errors",
		"security_log":    p + "/log/security",
		"db_dir":          p + "/db",
		"db_home_dir":     p + "/db",
		"backup_dir":      p + "/bak",
		"ldif_dir":        p + "/ldif",
	}
	var inf strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(sys)))
	for sc.Scan() {
		line := sc.Text()
		k, _, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if v, over := override[k]; ok && over && !strings.HasPrefix(k, ";") {
			fmt.Fprintf(&inf, "%s = %s\n", k, v)
			delete(override, k)
			continue
		}
		inf.WriteString(line + "\n")
	}
	for k, v := range override {
		fmt.Fprintf(&inf, "%s = %s\n", k, v)
	}
	for _, d := range []string{"share/dirsrv/inf", "etc/dirsrv", "tmp", "run/dirsrv", "log"} {
		if err := os.MkdirAll(filepath.Join(p, d), 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(p, "share/dirsrv/inf/defaults.inf"), []byte(inf.String()), 0o600); err != nil {
		return err
	}
	for _, d := range []string{"schema", "config"} {
		if err := copyDir(filepath.Join("/etc/dirsrv", d), filepath.Join(p, "etc/dirsrv", d)); err != nil {
			return fmt.Errorf("copy 389-DS %s templates (apt-get install -y 389-ds-base): %w", d, err)
		}
	}
	setup := fmt.Sprintf(`[general]
full_machine_name = localhost
start = False
strict_host_checking = False
systemd = False
selinux = False

[slapd]
instance_name = %s
port = 0
secure_port = 0
self_sign_cert = False
root_password = admin-secret
user = root
group = root

[backend-userroot]
suffix = %s
create_suffix_entry = True
`, s.instance, s.suffix)
	infPath := filepath.Join(p, "dscreate.inf")
	if err := os.WriteFile(infPath, []byte(setup), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(dscreate, "from-file", infPath)
	cmd.Env = append(os.Environ(), "PREFIX="+p)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dscreate from-file: %w\n%s", err, out)
	}
	return nil
}

// configure edits dse.ldif while the instance is down: bind the LDAP port
// to 127.0.0.1, turn on the retro changelog with the nsUniqueId mapping the
// Content Synchronization plugin needs, turn that plugin on, and add the UCS
// mail schema. One start then brings it all up; dsconf would need a running
// server and a restart.
func (s *ds389Server) configure(port int) error {
	const ds389BDB = "cn=bdb,cn=config,cn=ldbm database,cn=plugins,cn=config"
	dse := filepath.Join(s.configDir, "dse.ldif")
	data, err := os.ReadFile(dse)
	if err != nil {
		return fmt.Errorf("read dse.ldif: %w", err)
	}
	blocks := strings.Split(string(data), "\n\n")
	edit := func(dn string, f func([]string) []string) error {
		for i, b := range blocks {
			lines := strings.Split(strings.TrimLeft(b, "\n"), "\n")
			if strings.EqualFold(lines[0], "dn: "+dn) {
				blocks[i] = strings.Join(f(lines), "\n")
				return nil
			}
		}
		return fmt.Errorf("dse.ldif has no entry %s", dn)
	}
	set := func(attr, val string) func([]string) []string {
		return func(lines []string) []string {
			out := lines[:0:0]
			for _, l := range lines {
				if k, _, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, attr) {
					continue
				}
				out = append(out, l)
			}
			return append(out, attr+": "+val)
		}
	}
	add := func(attr, val string) func([]string) []string {
		return func(lines []string) []string { return append(lines, attr+": "+val) }
	}
	edits := []struct {
		dn string
		f  func([]string) []string
	}{
		{"cn=config", set("nsslapd-port", strconv.Itoa(port))},
		{"cn=config", set("nsslapd-listenhost", "127.0.0.1")},
		// The access log is written synchronously per operation; the tests
		// do not read it.
		{"cn=config", set("nsslapd-accesslog-logging-enabled", "off")},
		// A test directory is small: no 1.5 GB autosized database cache, and
		// no fsync per transaction (slapd runs with olcDbNoSync too).
		{ds389BDB, set("nsslapd-cache-autosize", "0")},
		{ds389BDB, set("nsslapd-dbcachesize", "33554432")},
		{ds389BDB, set("nsslapd-db-durable-transaction", "off")},
		{"cn=Retro Changelog Plugin,cn=plugins,cn=config", set("nsslapd-pluginEnabled", "on")},
		{"cn=Retro Changelog Plugin,cn=plugins,cn=config", add("nsslapd-attribute", "nsuniqueid:targetUniqueId")},
		{"cn=Retro Changelog Plugin,cn=plugins,cn=config", add("nsslapd-include-suffix", s.suffix)},
		{"cn=Content Synchronization,cn=plugins,cn=config", set("nsslapd-pluginEnabled", "on")},
	}
	for _, e := range edits {
		if err := edit(e.dn, e.f); err != nil {
			return err
		}
	}
	if err := os.WriteFile(dse, []byte(strings.Join(blocks, "\n\n")), 0o600); err != nil {
		return fmt.Errorf("write dse.ldif: %w", err)
	}
	schema := filepath.Join(s.configDir, "schema", "99ucs-mail.ldif")
	if err := os.WriteFile(schema, []byte(ucsMailSchema389), 0o600); err != nil {
		return fmt.Errorf("install UCS mail schema: %w", err)
	}
	return nil
}

func (d *DS389) start() error {
	s := d.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	// -d 0 keeps ns-slapd in the foreground, a child of the test process.
	cmd := exec.Command(s.binary, "-D", s.configDir, "-i", s.pidFile, "-d", "0")
	logf, err := os.OpenFile(filepath.Join(s.dir, "ns-slapd.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start ns-slapd: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	if err := WaitTCP(fmt.Sprintf("127.0.0.1:%d", d.Port), 30*time.Second); err != nil {
		errs, _ := os.ReadFile(filepath.Join(s.dir, "log/errors"))
		return fmt.Errorf("389-DS did not come up: %w\n%s", err, tail(errs, 4000))
	}
	return nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Start starts (or restarts) the server on its port with its data.
func (d *DS389) Start(t testing.TB) {
	t.Helper()
	if err := d.start(); err != nil {
		t.Fatal(err)
	}
}

// Stop stops the server, keeping its data; Start brings it back.
func (d *DS389) Stop(t testing.TB) {
	t.Helper()
	d.srv.stop()
}

// Close stops the server for good.
func (d *DS389) Close() { d.srv.stop() }

// Dir is the instance's prefix (logs in Dir/log).
func (d *DS389) Dir() string { return d.srv.dir }

func (s *ds389Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Tree returns a view of the server working in its own subtree
// ou=<name>,dc=example,dc=org, holding ou=people and ou=groups as the
// slapd skeleton does, so tests sharing one server do not see each other's
// entries.
func (d *DS389) Tree(t testing.TB, name string) *DS389 {
	t.Helper()
	v := *d
	v.BaseDN = "ou=" + ldap.EscapeDN(name) + "," + d.srv.suffix
	v.Add(t, v.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {name}})
	for _, ou := range []string{"people", "groups"} {
		v.Add(t, "ou="+ou+","+v.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {ou}})
	}
	return &v
}

// Conn returns a connection bound as the Directory Manager, shared by the
// helpers below.
func (d *DS389) Conn(t testing.TB) *ldap.Conn {
	t.Helper()
	s := d.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && !s.conn.IsClosing() {
		return s.conn
	}
	c, err := ldap.DialURL(d.URL)
	if err != nil {
		t.Fatalf("dial 389-DS: %v", err)
	}
	if err := c.Bind(d.AdminDN, d.AdminPW); err != nil {
		c.Close()
		t.Fatalf("bind 389-DS: %v", err)
	}
	s.conn = c
	return c
}

// Endpoint is where the view's directory is and how to bind to it.
func (d *DS389) Endpoint() Endpoint {
	return Endpoint{URL: d.URL, BaseDN: d.BaseDN, AdminDN: d.AdminDN, AdminPW: d.AdminPW}
}

// Add adds an entry.
func (d *DS389) Add(t testing.TB, dn string, attrs map[string][]string) {
	t.Helper()
	if err := d.TryAdd(t, dn, attrs); err != nil {
		t.Fatalf("add %s: %v", dn, err)
	}
}

// TryAdd adds an entry and returns the error instead of failing.
func (d *DS389) TryAdd(t testing.TB, dn string, attrs map[string][]string) error {
	t.Helper()
	return addEntry(d.Conn(t), dn, attrs)
}

// Modify replaces the named attributes; an empty slice deletes the attribute.
func (d *DS389) Modify(t testing.TB, dn string, replace map[string][]string) {
	t.Helper()
	if err := modifyEntry(d.Conn(t), dn, replace); err != nil {
		t.Fatalf("modify %s: %v", dn, err)
	}
}

// ModRDN renames an entry; newSuperior "" keeps it under its parent.
// It returns the new DN.
func (d *DS389) ModRDN(t testing.TB, dn, newRDN, newSuperior string) string {
	t.Helper()
	newDN, err := modRDN(d.Conn(t), dn, newRDN, newSuperior)
	if err != nil {
		t.Fatalf("modrdn %s: %v", dn, err)
	}
	return newDN
}

// Delete deletes an entry.
func (d *DS389) Delete(t testing.TB, dn string) {
	t.Helper()
	if err := d.Conn(t).Del(ldap.NewDelRequest(dn, nil)); err != nil {
		t.Fatalf("delete %s: %v", dn, err)
	}
}

// UserDN is where AddUser puts a user.
func (d *DS389) UserDN(uid string) string { return "uid=" + uid + ",ou=people," + d.BaseDN }

// GroupDN is where AddGroup puts a group.
func (d *DS389) GroupDN(cn string) string { return "cn=" + cn + ",ou=groups," + d.BaseDN }

// AddUser adds a mail user with password "secret"; mail may be empty. Extra
// attributes are added or override the defaults.
func (d *DS389) AddUser(t testing.TB, uid, mail string, extra map[string][]string) string {
	t.Helper()
	dn := d.UserDN(uid)
	d.Add(t, dn, userAttrs(uid, mail, extra))
	return dn
}

// AddGroup adds a posixGroup with DN members (uniqueMember) and an optional
// mail address. 389-DS's posixGroup (rfc2307compat) is auxiliary, so the
// entry also gets groupOfUniqueNames as its structural class.
func (d *DS389) AddGroup(t testing.TB, cn, mail string, members []string, extra map[string][]string) string {
	t.Helper()
	attrs := groupAttrs(cn, mail, members, extra)
	attrs["objectClass"] = append([]string{"groupOfUniqueNames"}, attrs["objectClass"]...)
	dn := d.GroupDN(cn)
	d.Add(t, dn, attrs)
	return dn
}

// Entries returns every entry mailsync follows below the view's base, with
// the UUID the Content Synchronization plugin gives it (the nsUniqueId in
// UUID form, listener.DS389), as the listener stores it.
func (d *DS389) Entries(t testing.TB) []event.Entry {
	t.Helper()
	return entries(t, d.Conn(t), d.BaseDN, listener.DS389{})
}

func copyDir(src, dst string) error {
	return filepath.Walk(src, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}
