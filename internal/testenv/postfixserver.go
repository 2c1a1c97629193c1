package testenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/mailconf"
)

// PostfixServer is a real running Postfix with everything of its own in a
// temp dir (config_directory, queue_directory, data_directory, mailsync's
// map dir, its mail log), smtpd on free ports of 127.0.0.1 for the three
// ports of manual 14.7.5, delivering to the test Dovecot over LMTP and
// authenticating SMTP clients through Dovecot's auth. It is configured by
// mailsync's own renderer (mailconf.RenderPostfix) with paths pointed into
// its dir, runs as root like a packaged Postfix, and is stopped by the test
// (`postfix -c DIR stop`, then its master's PID). The system's Postfix,
// /etc/postfix and /var/spool/postfix are never touched.
type PostfixServer struct {
	Host      string // myhostname
	Dir       string
	ConfigDir string
	QueueDir  string
	DataDir   string
	MapDir    string
	LogPath   string // maillog_file
	// SMTP, Submission and SMTPS are the ports 25, 587 and 465 stand-ins.
	SMTP, Submission, SMTPS string
	CA                      *CA // smtpd's certificate is this CA's server certificate

	Dovecot   *Dovecot
	bin       string
	postmap   string
	baseLocal string
	started   bool
}

// PostfixServerOptions tune NewPostfixServer.
type PostfixServerOptions struct {
	// Host is myhostname (default the Dovecot's FQDN).
	Host string
	// CA signs smtpd's certificate (default a new one).
	CA *CA
	// HomeSink, when set, stands for every other home server: Postfix's
	// SMTP client resolves Hosts' names to its address (in the chroot's
	// etc/hosts) and uses its port for "smtp" (known_tcp_ports), so mail
	// routed smtp:[other-host] reaches it.
	HomeSink *SMTPSink
	Hosts    []string
}

const postfixPkgs = "postfix"

// NewPostfixServer prepares a Postfix for d (dirs, ports, empty maps and a
// main.cf.local with the test's own lines) without configuring or starting
// it: Configure renders its config, Start starts it.
func NewPostfixServer(t testing.TB, d *Dovecot, opts PostfixServerOptions) *PostfixServer {
	t.Helper()
	bin := Require(t, "postfix", postfixPkgs)
	if opts.Host == "" {
		opts.Host = d.FQDN
	}
	if opts.CA == nil {
		opts.CA = NewCA(t)
	}
	// Not t.TempDir: the postfix user must traverse it, and a failed test
	// keeps it.
	dir, err := os.MkdirTemp("", "postfix-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &PostfixServer{
		Host: opts.Host, Dir: dir, CA: opts.CA, Dovecot: d, bin: bin,
		postmap:    Require(t, "postmap", postfixPkgs),
		ConfigDir:  filepath.Join(dir, "etc"),
		QueueDir:   filepath.Join(dir, "spool"),
		DataDir:    filepath.Join(dir, "lib"),
		MapDir:     filepath.Join(dir, "maps"),
		LogPath:    filepath.Join(dir, "maillog"),
		SMTP:       fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		Submission: fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		SMTPS:      fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("postfix: keeping %s (log %s)", dir, p.LogPath)
			return
		}
		os.RemoveAll(dir)
	})
	for _, sub := range []string{p.ConfigDir, p.QueueDir, p.DataDir, p.MapDir} {
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The data directory is Postfix's own (its tlsmgr and verify caches).
	if u, err := exec.Command("id", "-u", "postfix").Output(); err == nil {
		uid, _ := strconv.Atoi(strings.TrimSpace(string(u)))
		_ = os.Chown(p.DataDir, uid, -1)
	}
	// The maps exist before mailsync's handlers write them: a lookup in a
	// missing table defers mail.
	writeFile(t, filepath.Join(p.ConfigDir, "main.cf"), 0o644, "compatibility_level = 3.6\n")
	for _, m := range []string{"virtual_alias", "virtual_mailbox", "virtual_domains", "transport"} {
		src := filepath.Join(p.MapDir, m)
		writeFile(t, src, 0o644, "")
		if out, err := exec.Command(p.postmap, "-c", p.ConfigDir, "hash:"+src).CombinedOutput(); err != nil {
			t.Fatalf("postmap %s: %v %s", src, err, out)
		}
	}
	// What only a test host needs, through main.cf.local (manual 14.7.7)
	// like any local addition: a log file of its own, no DNS (other home
	// servers are names in /etc/hosts; the relay host is an address), and
	// the sink's port for smtp.
	local := []string{
		"maillog_file_prefixes = " + dir,
		"maillog_file = " + p.LogPath,
		"inet_protocols = ipv4",
		"smtp_host_lookup = native",
		"smtp_dns_support_level = disabled",
		"smtpd_tls_CAfile = " + p.CA.CertFile,
	}
	// The SMTP client runs chrooted in the queue dir (as in Debian) and
	// resolves names with its etc/ only.
	hosts := "127.0.0.1 localhost\n"
	if opts.HomeSink != nil {
		ip, port, _ := net.SplitHostPort(opts.HomeSink.Addr)
		for _, h := range opts.Hosts {
			hosts += ip + " " + h + "\n"
		}
		local = append(local, "known_tcp_ports = lmtp=24, smtp="+port+", smtps=submissions=465, submission=587")
	}
	if err := os.MkdirAll(filepath.Join(p.QueueDir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(p.QueueDir, "etc", "hosts"), 0o644, hosts)
	writeFile(t, filepath.Join(p.QueueDir, "etc", "nsswitch.conf"), 0o644, "hosts: files\n")
	p.baseLocal = strings.Join(local, "\n") + "\n"
	p.SetLocal(t, "", "")
	return p
}

// SetLocal writes main.cf.local (the test's own lines, then main) and
// master.cf.local; Configure then appends them.
func (p *PostfixServer) SetLocal(t testing.TB, main, master string) {
	t.Helper()
	writeFile(t, filepath.Join(p.ConfigDir, "main.cf.local"), 0o644, p.baseLocal+main)
	path := filepath.Join(p.ConfigDir, "master.cf.local")
	if master == "" {
		os.Remove(path)
		return
	}
	writeFile(t, path, 0o644, master)
}

// Params are the renderer's paths for this Postfix.
func (p *PostfixServer) Params() mailconf.Postfix {
	return mailconf.Postfix{
		Host: p.Host, ConfigDir: p.ConfigDir, QueueDir: p.QueueDir, DataDir: p.DataDir,
		Binary: p.bin, Postmap: p.postmap, MapDir: p.MapDir, MapType: "hash",
		LMTP: "inet:" + p.Dovecot.LMTPAddr, AuthPath: "inet:" + p.Dovecot.AuthAddr,
		TLSCert: p.CA.ServerCert, TLSKey: p.CA.ServerKey,
		SMTP: p.SMTP, Submission: p.Submission, SMTPS: p.SMTPS,
		MainCFLocal:   filepath.Join(p.ConfigDir, "main.cf.local"),
		MasterCFLocal: filepath.Join(p.ConfigDir, "master.cf.local"),
	}
}

// Configure renders the config for settings with mailsync's renderer and
// installs it (a running Postfix is reloaded). params, when not nil,
// changes the parameters first (the directory, relay credentials).
func (p *PostfixServer) Configure(settings mailconf.Settings, params func(*mailconf.Postfix)) (*mailconf.Product, error) {
	pf := p.Params()
	if params != nil {
		params(&pf)
	}
	prod, err := mailconf.RenderPostfix(settings, pf)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	changed, err := mailconf.Install(ctx, prod)
	if err == nil && len(changed) > 0 && p.started {
		// A reload is graceful: processes of the old generation finish
		// what they hold and may take one more client. Give them a moment,
		// so a test's next message meets the new configuration.
		time.Sleep(time.Second)
	}
	return prod, err
}

// Start starts Postfix (`postfix -c DIR start`) and waits for the SMTP
// greeting on every port.
func (p *PostfixServer) Start(t testing.TB) {
	t.Helper()
	out, err := exec.Command(p.bin, "-c", p.ConfigDir, "start").CombinedOutput()
	if err != nil {
		t.Fatalf("postfix -c %s start: %v %s\n%s", p.ConfigDir, err, out, p.Log())
	}
	p.started = true
	for _, a := range []string{p.SMTP, p.Submission} {
		if err := waitGreeting(a, 15*time.Second); err != nil {
			t.Fatalf("postfix: %v\n%s", err, p.Log())
		}
	}
	if err := WaitTCP(p.SMTPS, 15*time.Second); err != nil {
		t.Fatalf("postfix: %v\n%s", err, p.Log())
	}
}

// Reload makes the running Postfix read its config again.
func (p *PostfixServer) Reload(t testing.TB) {
	t.Helper()
	if out, err := exec.Command(p.bin, "-c", p.ConfigDir, "reload").CombinedOutput(); err != nil {
		t.Fatalf("postfix reload: %v %s", err, out)
	}
}

func waitGreeting(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := greeting(addr, "220")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no SMTP greeting after %s: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends this Postfix only: `postfix -c DIR stop`, then its master by
// the PID in its own queue directory.
func (p *PostfixServer) stop() {
	if !p.started {
		return
	}
	p.started = false
	_ = exec.Command(p.bin, "-c", p.ConfigDir, "stop").Run()
	pidFile := filepath.Join(p.QueueDir, "pid", "master.pid")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Log returns the last lines of Postfix's mail log.
func (p *PostfixServer) Log() string {
	data, _ := os.ReadFile(p.LogPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "--- " + p.LogPath + "\n" + strings.Join(lines, "\n")
}

// QueueEntry is one message in Postfix's queue (postqueue -j).
type QueueEntry struct {
	QueueName  string `json:"queue_name"` // incoming, active, deferred, hold
	QueueID    string `json:"queue_id"`
	Sender     string `json:"sender"`
	Recipients []struct {
		Address     string `json:"address"`
		DelayReason string `json:"delay_reason"`
	} `json:"recipients"`
}

// QueueEntries lists the queue (`postqueue -c DIR -j`).
func (p *PostfixServer) QueueEntries(t testing.TB) []QueueEntry {
	t.Helper()
	out, err := exec.Command(filepath.Join(filepath.Dir(p.bin), "postqueue"), "-c", p.ConfigDir, "-j").Output()
	if err != nil {
		t.Fatalf("postqueue -j: %v %s", err, out)
	}
	var q []QueueEntry
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" {
			continue
		}
		var e QueueEntry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("postqueue -j: %v: %s", err, l)
		}
		q = append(q, e)
	}
	return q
}

// Mail is a message for Send.
type Mail struct {
	From    string
	To      []string
	Subject string
	Body    string
	// StartTLS upgrades the session before MAIL; WrapperTLS speaks TLS
	// from the first byte (port 465).
	StartTLS, WrapperTLS bool
	// User and Password authenticate with AUTH PLAIN.
	User, Password string
	// LocalIP is the client's address (default 127.0.0.1); another
	// loopback address is a client outside mynetworks.
	LocalIP string
}

// Dial connects to the SMTP server at addr as m's client would (its
// source address, TLS from the first byte or after STARTTLS) and says EHLO;
// the caller closes the client.
func (p *PostfixServer) Dial(addr string, m Mail) (*smtp.Client, error) {
	ip := m.LocalIP
	if ip == "" {
		ip = "127.0.0.1"
	}
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	var conn net.Conn
	var err error
	if m.WrapperTLS {
		conn, err = tls.DialWithDialer(&d, "tcp", addr, p.clientTLS())
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	c, err := smtp.NewClient(conn, "127.0.0.1")
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := c.Hello("client.example.net"); err != nil {
		c.Close()
		return nil, err
	}
	if m.StartTLS {
		if err := c.StartTLS(p.clientTLS()); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Send sends m to the SMTP server at addr and returns the server's
// refusal (a *textproto.Error carries its code), or nil when it queued it.
func (p *PostfixServer) Send(addr string, m Mail) error {
	c, err := p.Dial(addr, m)
	if err != nil {
		return err
	}
	defer c.Close()
	if m.User != "" {
		if err := c.Auth(smtp.PlainAuth("", m.User, m.Password, "127.0.0.1")); err != nil {
			return err
		}
	}
	if err := c.Mail(m.From); err != nil {
		return err
	}
	for _, r := range m.To {
		if err := c.Rcpt(r); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%d@client.example.net>\r\n\r\n%s\r\n",
		m.From, strings.Join(m.To, ", "), m.Subject, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), m.Body)
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func (p *PostfixServer) clientTLS() *tls.Config {
	c := p.CA.ClientTLS()
	c.ServerName = "127.0.0.1"
	return c
}

// Greeting returns the first line an SMTP server at addr sends.
func Greeting(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// Pregreet connects from localIP, sends line at once, before the server's
// greeting is complete, as spam bots do, and returns the first reply line
// that is not part of the greeting.
func Pregreet(addr, localIP, line string) (string, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte(line + "\r\n")); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return strings.TrimRight(l, "\r\n"), err
		}
		if !strings.HasPrefix(l, "220") {
			return strings.TrimRight(l, "\r\n"), nil
		}
	}
}
