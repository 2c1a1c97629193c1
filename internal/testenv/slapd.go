package testenv

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
	"mailsync/listener"
)

//go:embed schema/ucs-mail.ldif
var ucsMailSchema string

// Slapd is a running OpenLDAP server: mdb database with the syncprov overlay
// (checkpoint and session log), the UCS mail schema, cn=config in a temp dir.
type Slapd struct {
	URL     string
	BaseDN  string
	AdminDN string
	AdminPW string
	Dir     string
	Port    int
	// LDAPSURL is set when the server was started with TLS.
	LDAPSURL  string
	ldapsPort int

	binary string
	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	conn   *ldap.Conn
}

// SlapdOptions tune StartSlapd.
type SlapdOptions struct {
	// SessionLog is the syncprov session log size (default 1000). A small
	// one forces present-phase refreshes.
	SessionLog int
	// MaxSizeMB of the mdb map (default 4096).
	MaxSizeMB int
	// Preload is an LDIF file loaded with slapadd before slapd starts,
	// below the skeleton (base, ou=people, ou=groups); for large
	// directories, where adding over LDAP would take minutes.
	Preload string
	// TLS serves StartTLS on the ldap:// port and LDAPS on a second port
	// with a certificate of this CA.
	TLS *CA
}

// StartSlapd starts slapd on a free loopback port with base dc=example,dc=org
// holding ou=people and ou=groups.
func StartSlapd(t testing.TB) *Slapd { return StartSlapdWith(t, SlapdOptions{}) }

// StartSlapdWith starts slapd with options.
func StartSlapdWith(t testing.TB, o SlapdOptions) *Slapd {
	t.Helper()
	bin := Require(t, "slapd", "slapd ldap-utils")
	slapadd := Require(t, "slapadd", "slapd")
	if o.SessionLog == 0 {
		o.SessionLog = 1000
	}
	if o.MaxSizeMB == 0 {
		o.MaxSizeMB = 4096
	}
	dir := t.TempDir()
	s := &Slapd{
		BaseDN:  "dc=example,dc=org",
		AdminDN: "cn=admin,dc=example,dc=org",
		AdminPW: "admin-secret",
		Dir:     dir,
		Port:    FreePort(t),
	}
	s.URL = fmt.Sprintf("ldap://127.0.0.1:%d", s.Port)
	if o.TLS != nil {
		s.ldapsPort = FreePort(t)
		s.LDAPSURL = fmt.Sprintf("ldaps://127.0.0.1:%d", s.ldapsPort)
	}
	for _, d := range []string{"slapd.d", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	cfg := s.configLDIF(t, o)
	if out, err := exec.Command(slapadd, "-n0", "-F", filepath.Join(dir, "slapd.d"), "-l", cfg).CombinedOutput(); err != nil {
		t.Fatalf("slapadd cn=config: %v\n%s", err, out)
	}
	s.binary = bin
	if o.Preload != "" {
		skel := filepath.Join(dir, "skeleton.ldif")
		if err := os.WriteFile(skel, []byte(s.skeletonLDIF()), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{skel, o.Preload} {
			if out, err := exec.Command(slapadd, "-q", "-n1", "-F", filepath.Join(dir, "slapd.d"), "-l", f).CombinedOutput(); err != nil {
				t.Fatalf("slapadd %s: %v\n%s", f, err, out)
			}
		}
	}
	s.Start(t)
	t.Cleanup(func() { s.stop() })
	if o.Preload == "" {
		s.addSkeleton(t)
	}
	return s
}

func (s *Slapd) configLDIF(t testing.TB, o SlapdOptions) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: %[1]s/slapd.pid
olcArgsFile: %[1]s/slapd.args
olcLogLevel: none
`, s.Dir)
	if o.TLS != nil {
		fmt.Fprintf(&b, "olcTLSCACertificateFile: %s\nolcTLSCertificateFile: %s\nolcTLSCertificateKeyFile: %s\n",
			o.TLS.CertFile, o.TLS.ServerCert, o.TLS.ServerKey)
	}
	fmt.Fprintf(&b, `
dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: syncprov

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

`)
	for _, f := range []string{"core", "cosine", "nis", "inetorgperson"} {
		data, err := os.ReadFile("/etc/ldap/schema/" + f + ".ldif")
		if err != nil {
			t.Fatalf("read OpenLDAP schema %s (apt-get install -y slapd): %v", f, err)
		}
		b.Write(data)
		b.WriteString("\n\n")
	}
	b.WriteString(ucsMailSchema)
	fmt.Fprintf(&b, `

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend
olcSizeLimit: unlimited

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by * none

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcSuffix: %[1]s
olcRootDN: %[2]s
olcRootPW: %[3]s
olcDbDirectory: %[4]s/data
olcDbMaxSize: %[5]d
olcDbNoSync: TRUE
olcSizeLimit: unlimited
olcLimits: {0}* size=unlimited time=unlimited
olcDbIndex: objectClass eq
olcDbIndex: entryUUID,entryCSN eq
olcDbIndex: uid,cn eq
olcDbIndex: mailPrimaryAddress,mailAlternativeAddress eq
olcDbIndex: univentionMailHomeServer eq,pres
olcDbIndex: uniqueMember eq
olcAccess: {0}to attrs=userPassword by anonymous auth by * none
olcAccess: {1}to * by * read

dn: olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {0}syncprov
olcSpCheckpoint: 100 10
olcSpSessionlog: %[6]d
`, s.BaseDN, s.AdminDN, s.AdminPW, s.Dir, int64(o.MaxSizeMB)*1024*1024, o.SessionLog)
	p := filepath.Join(s.Dir, "config.ldif")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// CPU is the CPU time slapd has used so far (ProcessCPU).
func (s *Slapd) CPU() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return ProcessCPU(s.cmd.Process.Pid, false)
}

// Start starts (or restarts) slapd on its port with its data and waits until
// it answers.
func (s *Slapd) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	urls := fmt.Sprintf("ldap://127.0.0.1:%d/", s.Port)
	if s.ldapsPort != 0 {
		urls += fmt.Sprintf(" ldaps://127.0.0.1:%d/", s.ldapsPort)
	}
	cmd := exec.Command(s.binary, "-d", "0", "-F", filepath.Join(s.Dir, "slapd.d"), "-h", urls)
	logf, err := os.OpenFile(filepath.Join(s.Dir, "slapd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start slapd: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	if err := WaitTCP(fmt.Sprintf("127.0.0.1:%d", s.Port), 10*time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.Dir, "slapd.log"))
		t.Fatalf("slapd did not come up: %v\n%s", err, log)
	}
}

// Stop stops slapd, keeping its data; Start brings it back on the same port.
func (s *Slapd) Stop(t testing.TB) {
	t.Helper()
	s.stop()
}

func (s *Slapd) stop() {
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
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Wipe stops slapd, empties its database (the skeleton comes back with new
// entryUUIDs) and starts it again: a directory accident for the tests.
func (s *Slapd) Wipe(t testing.TB) {
	t.Helper()
	s.stop()
	files, _ := filepath.Glob(filepath.Join(s.Dir, "data", "*"))
	for _, f := range files {
		os.Remove(f)
	}
	s.Start(t)
	s.addSkeleton(t)
}

func (s *Slapd) skeletonLDIF() string {
	return fmt.Sprintf("dn: %[1]s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"+
		"dn: ou=people,%[1]s\nobjectClass: organizationalUnit\nou: people\n\n"+
		"dn: ou=groups,%[1]s\nobjectClass: organizationalUnit\nou: groups\n\n", s.BaseDN)
}

func (s *Slapd) addSkeleton(t testing.TB) {
	t.Helper()
	s.Add(t, s.BaseDN, map[string][]string{
		"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"},
	})
	for _, ou := range []string{"people", "groups"} {
		s.Add(t, "ou="+ou+","+s.BaseDN, map[string][]string{
			"objectClass": {"organizationalUnit"}, "ou": {ou},
		})
	}
}

// Conn returns a connection bound as the admin, shared by the helpers below.
func (s *Slapd) Conn(t testing.TB) *ldap.Conn {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && !s.conn.IsClosing() {
		return s.conn
	}
	c, err := ldap.DialURL(s.URL)
	if err != nil {
		t.Fatalf("dial slapd: %v", err)
	}
	if err := c.Bind(s.AdminDN, s.AdminPW); err != nil {
		c.Close()
		t.Fatalf("bind slapd: %v", err)
	}
	s.conn = c
	return c
}

// Add adds an entry.
func (s *Slapd) Add(t testing.TB, dn string, attrs map[string][]string) {
	t.Helper()
	if err := s.TryAdd(t, dn, attrs); err != nil {
		t.Fatalf("add %s: %v", dn, err)
	}
}

// TryAdd adds an entry and returns the error instead of failing.
func (s *Slapd) TryAdd(t testing.TB, dn string, attrs map[string][]string) error {
	t.Helper()
	return addEntry(s.Conn(t), dn, attrs)
}

// Modify replaces the named attributes; an empty slice deletes the attribute.
func (s *Slapd) Modify(t testing.TB, dn string, replace map[string][]string) {
	t.Helper()
	if err := modifyEntry(s.Conn(t), dn, replace); err != nil {
		t.Fatalf("modify %s: %v", dn, err)
	}
}

// ModRDN renames an entry; newSuperior "" keeps it under its parent.
// It returns the new DN.
func (s *Slapd) ModRDN(t testing.TB, dn, newRDN, newSuperior string) string {
	t.Helper()
	newDN, err := modRDN(s.Conn(t), dn, newRDN, newSuperior)
	if err != nil {
		t.Fatalf("modrdn %s: %v", dn, err)
	}
	return newDN
}

// Delete deletes an entry.
func (s *Slapd) Delete(t testing.TB, dn string) {
	t.Helper()
	if err := s.Conn(t).Del(ldap.NewDelRequest(dn, nil)); err != nil {
		t.Fatalf("delete %s: %v", dn, err)
	}
}

// UserDN is where AddUser puts a user.
func (s *Slapd) UserDN(uid string) string { return "uid=" + uid + ",ou=people," + s.BaseDN }

// GroupDN is where AddGroup puts a group.
func (s *Slapd) GroupDN(cn string) string { return "cn=" + cn + ",ou=groups," + s.BaseDN }

var uidCounter struct {
	sync.Mutex
	n int
}

// AddUser adds a mail user with password "secret"; mail may be empty. Extra
// attributes are added or override the defaults.
func (s *Slapd) AddUser(t testing.TB, uid, mail string, extra map[string][]string) string {
	t.Helper()
	dn := s.UserDN(uid)
	s.Add(t, dn, userAttrs(uid, mail, extra))
	return dn
}

// AddGroup adds a posixGroup with DN members (uniqueMember) and an optional
// mail address.
func (s *Slapd) AddGroup(t testing.TB, cn, mail string, members []string, extra map[string][]string) string {
	t.Helper()
	dn := s.GroupDN(cn)
	s.Add(t, dn, groupAttrs(cn, mail, members, extra))
	return dn
}

// Entries returns every entry mailsync follows, as the listener stores it.
func (s *Slapd) Entries(t testing.TB) []event.Entry {
	t.Helper()
	return entries(t, s.Conn(t), s.BaseDN, listener.OpenLDAP{})
}

func sortedKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
