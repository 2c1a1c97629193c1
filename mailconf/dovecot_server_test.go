package mailconf_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailsync/config"
	"mailsync/dovecotadm"
	"mailsync/internal/testenv"
	"mailsync/mailconf"
)

// hostFor is the mailconf.DovecotHost of a test Dovecot: its conf dir, its layout.
func hostFor(d *testenv.Dovecot, dropIn string) *mailconf.DovecotHost {
	return &mailconf.DovecotHost{Target: mailconf.DovecotTarget{
		ConfDir:    d.ConfDir,
		MailHome:   d.MailHome,
		IndexHome:  d.IndexRoot + "/%Ld/%Ln",
		UnitDropIn: dropIn,
	}}
}

// configure renders, validates and installs the fragments for h the way
// `mailsync configure` does (mailconf.Install reloads a running Dovecot).
func configure(t *testing.T, h *mailconf.DovecotHost, s mailconf.Settings) []mailconf.File {
	t.Helper()
	ctx := context.Background()
	conf, unit, err := h.Products(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	files := conf.Files
	for _, p := range []*mailconf.Product{conf, unit} {
		if p == nil {
			continue
		}
		if _, err := mailconf.Install(ctx, p); err != nil {
			t.Fatal(err)
		}
		if p == unit {
			files = append(files, unit.Files...)
		}
	}
	return files
}

// installFiles writes rendered files into place (temp file and rename, so
// Dovecot never reads half a fragment).
func installFiles(t *testing.T, files []mailconf.File) {
	t.Helper()
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
			t.Fatal(err)
		}
		tmp := f.Path + ".tmp"
		if err := os.WriteFile(tmp, f.Data, f.Mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.Path); err != nil {
			t.Fatal(err)
		}
	}
}

// dovecotLogs is everything the test Dovecot logged (its log file and what
// the master wrote to stderr before its log process was up).
func dovecotLogs(t *testing.T, d *testenv.Dovecot) string {
	t.Helper()
	var b strings.Builder
	for _, p := range []string{d.LogPath, filepath.Join(d.Dir, "stderr.log")} {
		data, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		b.Write(data)
	}
	return b.String()
}

// reload runs the production reload and waits until the master has read
// the new configuration.
func reload(t *testing.T, h *mailconf.DovecotHost, d *testenv.Dovecot) {
	t.Helper()
	before := strings.Count(dovecotLogs(t, d), "reloading configuration")
	running, err := h.Reload(context.Background())
	if err != nil || !running {
		t.Fatalf("reload: running %v, %v", running, err)
	}
	waitReloaded(t, d, before)
}

// waitReloaded waits until the master logs one more reload than before.
func waitReloaded(t *testing.T, d *testenv.Dovecot, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(dovecotLogs(t, d), "reloading configuration") == before {
		if time.Now().After(deadline) {
			t.Fatalf("dovecot did not reload\n%s", d.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // the old processes hand over
}

// restart restarts Dovecot: a reload leaves a listener's backlog as it
// was at the start (process_limit × client_limit then), and a burst of
// connections beyond it is reset by the kernel before the greeting.
func restart(t *testing.T, d *testenv.Dovecot) {
	t.Helper()
	d.Stop(t)
	d.Start(t)
}

// concurrentLogins opens n IMAP sessions at once, users taking turns,
// holds them all open and proves each is served by an imap process
// (SELECT INBOX), then closes them. It returns how many got that far.
func concurrentLogins(t *testing.T, d *testenv.Dovecot, users []string, n int, timeout time.Duration) (int, []error) {
	t.Helper()
	imap := &dovecotadm.IMAP{Addr: d.IMAPAddr, Timeout: timeout}
	var (
		mu      sync.Mutex
		ok      int
		errs    []error
		clients []*imapclient.Client
		wg      sync.WaitGroup
	)
	ready := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(user string) {
			defer wg.Done()
			<-ready
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			c, err := imap.Dial(ctx, user, "secret")
			if err == nil {
				stop := context.AfterFunc(ctx, func() { c.Close() })
				_, err = c.Select("INBOX", nil).Wait()
				stop()
				if err != nil {
					c.Close()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", user, err))
				return
			}
			ok++
			clients = append(clients, c)
		}(users[i%len(users)])
	}
	close(ready)
	wg.Wait()
	for _, c := range clients {
		c.Close()
	}
	return ok, errs
}

// ucs-test 30 (30_imap_server_with_hundreds_of_connections) against a real
// Dovecot, and the manual's connection limits (14.7.12): with the limits
// raised, 500 concurrent logins all succeed and Dovecot does not warn; the
// same limits written UCS's way (auth and anvil left at 2000 and 1603)
// make it warn.
func TestDovecotHundredsOfConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("500 IMAP sessions")
	}
	ldap := testenv.StartSlapd(t)
	// Dovecot allows 10 sessions per user and IP (mail_max_userip_connections).
	var users []string
	for i := 0; i < 100; i++ {
		u := fmt.Sprintf("user%03d", i)
		ldap.AddUser(t, u, u+"@example.org", nil)
		users = append(users, u+"@example.org")
	}

	// UCS's defaults, rendered: 400 imap processes. 500 sessions cannot
	// all be served, so the test below would see a limit that bites.
	d := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{})
	h := hostFor(d, filepath.Join(d.Dir, "dovecot.service.d", "mailsync-limits.conf"))
	configure(t, h, mailconf.Settings{})
	restart(t, d)
	ok, _ := concurrentLogins(t, d, users, 500, 20*time.Second)
	if ok > 400 {
		t.Errorf("UCS's default limits: %d of 500 sessions served, want at most 400 (imap process_limit)", ok)
	}
	t.Logf("UCS's default limits: %d of 500 sessions served", ok)

	// Raised. The test Dovecot runs imap and lmtp; at 1000 Dovecot requires
	// auth 3000 and anvil 2003, above UCS's static 2000 and 1603 (UCS also
	// runs pop3 and sieve, where 600 already needs 3000 and 1803).
	raised := mailconf.Settings{
		"mail/dovecot/limits/default_client_limit":  "1000",
		"mail/dovecot/limits/default_process_limit": "1000",
	}
	files := configure(t, h, raised)
	restart(t, d)
	ok, errs := concurrentLogins(t, d, users, 500, 60*time.Second)
	if ok != 500 {
		t.Errorf("raised limits: %d of 500 sessions served; first errors: %v\n%s", ok, errs[:min(3, len(errs))], d.Log())
	}
	if logs := dovecotLogs(t, d); strings.Contains(logs, "lower than required") {
		t.Errorf("dovecot warns with the rendered limits:\n%s", grepLines(logs, "lower than required"))
	}

	// The same limits UCS's way: its template prints auth and anvil as set,
	// 2000 and 1603 when unset (reference §5.1).
	limits := fileAt(t, files, filepath.Join(d.ConfDir, "conf.d", mailconf.DovecotLimitsFile))
	ucsWay := *limits
	ucsWay.Data = regexp.MustCompile(`(service auth \{\n  client_limit = )\d+`).ReplaceAll(ucsWay.Data, []byte("${1}2000"))
	ucsWay.Data = regexp.MustCompile(`(service anvil \{\n  client_limit = )\d+`).ReplaceAll(ucsWay.Data, []byte("${1}1603"))
	installFiles(t, []mailconf.File{ucsWay})
	reload(t, h, d)
	logs := dovecotLogs(t, d)
	for _, want := range []string{
		"service auth { client_limit=2000 } is lower than required under max. load (3000)",
		"service anvil { client_limit=1603 } is lower than required under max. load (2003)",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("UCS's way: log lacks %q:\n%s", want, d.Log())
		}
	}
}

// The fd limit the drop-in carries is exactly what Dovecot's master checks
// at start: with it, no warning; one less, the manual's warning.
func TestDovecotFDLimit(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	target := mailconf.DovecotTarget{ConfDir: "/unused", MailHome: "/unused/%Ld/%Ln", IndexHome: "/unused/i/%Ld/%Ln", UnitDropIn: "/unused/limits.conf"}
	probe := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{})
	facts, err := hostFor(probe, "").Probe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	probe.Stop(t)
	files, err := mailconf.RenderDovecot(mailconf.Settings{
		"mail/dovecot/limits/default_client_limit":  "1000",
		"mail/dovecot/limits/default_process_limit": "1000",
	}, target, facts)
	if err != nil {
		t.Fatal(err)
	}
	var nofile uint64
	if _, err := fmt.Sscanf(grepLines(string(fileAt(t, files, target.UnitDropIn).Data), "LimitNOFILE="), "LimitNOFILE=%d", &nofile); err != nil {
		t.Fatal(err)
	}
	if nofile != 3000 {
		t.Errorf("LimitNOFILE=%d, want 3000 (auth's client_limit)", nofile)
	}
	conf := map[string][]byte{mailconf.DovecotLimitsFile: fileAt(t, files, "/unused/conf.d/"+mailconf.DovecotLimitsFile).Data}
	for _, tc := range []struct {
		nofile uint64
		warn   bool
	}{{nofile, false}, {nofile - 1, true}} {
		d := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{ConfFiles: conf, NoFile: tc.nofile})
		want := fmt.Sprintf("fd limit (ulimit -n) is lower than required under max. load (%d < %d)", nofile-1, nofile)
		logs := dovecotLogs(t, d)
		if got := strings.Contains(logs, "fd limit"); got != tc.warn {
			t.Errorf("ulimit -n %d: fd warning %v, want %v:\n%s", tc.nofile, got, tc.warn, grepLines(logs, "fd limit"))
		}
		if tc.warn && !strings.Contains(logs, want) {
			t.Errorf("ulimit -n %d: log lacks %q", tc.nofile, want)
		}
		d.Stop(t)
	}
}

// separate_index=yes (manual 14.7.11): a Dovecot started with the rendered
// mail fragment keeps its indexes under the index root and finds them
// again after a restart; the maildir holds no index.
func TestDovecotRenderedSeparateIndex(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "erin", "erin@example.org", nil)
	// The test Dovecot's own mail_location has no INDEX=: only the
	// rendered fragment can move the index.
	d := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{})
	configure(t, hostFor(d, ""), mailconf.Settings{config.KeySeparateIndex: "yes"})
	d.Stop(t)
	d.Start(t)

	d.Deliver(t, "erin@example.org", "indexed")
	c := d.IMAP(t, "erin@example.org")
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(d.IndexRoot, "example.org", "erin", ".INBOX") // maildir++ names INBOX .INBOX in the index tree
	if _, err := os.Stat(filepath.Join(index, "dovecot.index.log")); err != nil {
		t.Errorf("no index under the index root: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(d.Home("erin@example.org"), "Maildir", "dovecot.index*")); len(m) > 0 {
		t.Errorf("index files in the maildir: %v", m)
	}
	before, _ := os.Stat(filepath.Join(index, "dovecot.index.log"))
	d.Stop(t)
	d.Start(t)
	if got := d.MailboxSummary(t, "erin@example.org"); got["INBOX"].Messages != 1 {
		t.Errorf("after restart: %+v", got)
	}
	after, err := os.Stat(filepath.Join(index, "dovecot.index.log"))
	if err != nil || before == nil || !os.SameFile(before, after) {
		t.Errorf("the restarted Dovecot made a new index instead of finding it: %v", err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
