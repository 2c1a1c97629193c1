package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailsync/internal/testenv"
)

// mailHost is the host the tests' configs name.
const mailHost = "mail.example.org"

// verbConfig writes a config for the verb tests: handlers as given, the
// mailbox handler on dc (nil: a doveadm URL nobody answers, for plan),
// extra (YAML) merged over it.
func verbConfig(t testing.TB, ldap *testenv.Slapd, dc *testenv.Dovecot, handlers []string, extra string) (cfg, dir string) {
	t.Helper()
	c := verbBuilder(t, ldap, dc, handlers).Merge(extra)
	return c.Write(""), c.Dir()
}

// verbBuilder is verbConfig's config before it is written, for a test
// that writes variants of it.
func verbBuilder(t testing.TB, ldap *testenv.Slapd, dc *testenv.Dovecot, handlers []string) *testenv.MailsyncConfig {
	t.Helper()
	c := testenv.NewMailsyncConfig(t, "").Set("host", mailHost).Handlers(handlers...).Slapd(ldap).
		Postfix(testenv.StartPostfix(t), "").Set("log.level", "warn")
	if dc != nil {
		c.Dovecot(dc)
	} else {
		c.Set("dovecot.doveadm_url", "http://127.0.0.1:1/doveadm/v1").
			Set("dovecot.api_key_file", c.Secret("api.key", "none")).
			Set("dovecot.mail_home", filepath.Join(c.Dir(), "spool")+"/%Ld/%Ln")
	}
	return c
}

// startDaemon runs `mailsync run` in the test process until stop is called.
func startDaemon(t testing.TB, cfg string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testenv.LogBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "-c", cfg}, &bytes.Buffer{}, &stderr) }()
	c, err := loadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATS.URL == "" {
		// The daemon is up once its CLI socket is there; one that ends
		// first says why.
		sock := filepath.Join(c.StateDir, natsSockPath)
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			select {
			case err := <-done:
				cancel()
				t.Fatalf("daemon ended before its socket %s was there: %v\n%s", sock, err, stderr.String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				cancel()
				t.Fatalf("daemon: %s not there after 30s\n%s", sock, stderr.String())
			}
		}
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mailsync run: %v\n%s", err, stderr.String())
		}
	}
	t.Cleanup(stop)
	return stop
}

// verb runs one mailsync verb and returns its output and exit code.
func verb(t testing.TB, cfg string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append(args, "-c", cfg), &out, &errOut)
	code = exitCode(err, &errOut)
	return out.String(), errOut.String(), code
}

// TestCheckFindsPlantedDisagreementsAndResyncRepairs: a synced system
// checks clean; an orphaned home, a missing home and a stale map entry
// planted by hand are each reported with exit code 1; resync brings back
// the mailbox and the map (never deleting the orphan).
func TestCheckFindsPlantedDisagreementsAndResyncRepairs(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: mailHost})
	alice := ldap.AddUser(t, "alice", "alice@example.org", nil)
	carol := ldap.AddUser(t, "carol", "carol@example.org", map[string][]string{"mailAlternativeAddress": {"c@example.org"}})
	ldap.AddUser(t, "bob", "bob@example.org", map[string][]string{"univentionMailHomeServer": {"other.example.org"}})
	ldap.AddGroup(t, "staff", "staff@example.org", []string{alice, carol}, nil)
	cfg, dir := verbConfig(t, ldap, dc, []string{"mailbox", "aliases", "homeserver"}, "metrics:\n  listen: \"off\"\n")
	stop := startDaemon(t, cfg)

	waitCheck(t, cfg, 30*time.Second)
	out, _, _ := verb(t, cfg, "check")
	if !strings.Contains(out, "everything agrees") || !strings.Contains(out, "2 mailboxes") {
		t.Errorf("check on a synced system:\n%s", out)
	}
	stop()
	marker := filepath.Join(dc.Home("alice@example.org"), ".mailsync-owner")
	liveMarker, err := os.ReadFile(marker)
	if err != nil {
		t.Fatalf("live sync left no owner marker: %v", err)
	}

	// Plant an orphan, a missing mailbox and a stale map entry.
	ghost := filepath.Join(dc.Spool, "example.org", "ghost")
	if err := os.MkdirAll(filepath.Join(ghost, "Maildir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dc.Home("alice@example.org")); err != nil {
		t.Fatal(err)
	}
	aliasMap := filepath.Join(dir, "maps", "virtual_alias")
	f, err := os.OpenFile(aliasMap, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "stale@example.org carol@example.org")
	f.Close()

	out, stderr, code := verb(t, cfg, "check")
	if code != 1 {
		t.Fatalf("check exit %d with planted disagreements, want 1\n%s%s", code, out, stderr)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^orphaned mailbox\s+` + regexp.QuoteMeta(ghost) + `\s`),
		regexp.MustCompile(`(?m)^missing mailbox\s+alice@example\.org\s+` + regexp.QuoteMeta(alice)),
		regexp.MustCompile(`(?m)^stale map entry\s+virtual_alias: stale@example\.org\s`),
	} {
		if !want.MatchString(out) {
			t.Errorf("check output lacks %s:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 3 {
		t.Errorf("check reports %d lines, want 3:\n%s", n, out)
	}
	if !strings.Contains(stderr, "3 disagreements") {
		t.Errorf("check's error: %s", stderr)
	}

	out, stderr, code = verb(t, cfg, "resync")
	if code != 0 {
		t.Fatalf("resync exit %d\n%s%s", code, out, stderr)
	}
	if !strings.Contains(out, "mailbox: 1 created") || !strings.Contains(stderr, "mailbox: 1/1 (100%)") {
		t.Errorf("resync output:\n%s\nprogress:\n%s", out, stderr)
	}
	// Converged: the home resync made is the one live sync made.
	if m, err := os.ReadFile(marker); err != nil || !bytes.Equal(m, liveMarker) {
		t.Errorf("alice's home after resync: marker %q (%v), live sync wrote %q", m, err, liveMarker)
	}
	pf := &testenv.Postfix{Postmap: testenv.Require(t, "postmap", "postfix"), ConfigDir: t.TempDir()}
	os.WriteFile(filepath.Join(pf.ConfigDir, "main.cf"), []byte("compatibility_level = 3.6\n"), 0o644)
	if got := pf.Query(t, "hash:"+aliasMap, "stale@example.org", "staff@example.org"); got["stale@example.org"] != "" ||
		got["staff@example.org"] != "alice@example.org,carol@example.org" {
		t.Errorf("virtual_alias after resync: %v", got)
	}
	// The orphan stays: resync never deletes.
	out, _, code = verb(t, cfg, "check")
	if code != 1 || !strings.Contains(out, ghost) || strings.Count(out, "\n") != 1 {
		t.Errorf("check after resync: exit %d, want only the orphan:\n%s", code, out)
	}
	os.RemoveAll(ghost)
	if out, _, code = verb(t, cfg, "check"); code != 0 {
		t.Errorf("check after removing the orphan: exit %d\n%s", code, out)
	}
}

// TestResyncConvergesWithLiveSync: on a directory of 2000 users in 100
// groups, the maps resync builds from nothing equal, byte for byte, those
// live sync built. (Mailboxes converge in
// TestCheckFindsPlantedDisagreementsAndResyncRepairs: Dovecot creates a few
// a second on this CI, too slow for 2000.)
func TestResyncConvergesWithLiveSync(t *testing.T) {
	t.Parallel()
	const users = 2000
	ldap, cfg, dir := bigDirectory(t, users)
	stop := startDaemon(t, cfg)
	waitCheck(t, cfg, 2*time.Minute)
	stop()
	live := snapshotMaps(t, filepath.Join(dir, "maps"))

	os.RemoveAll(filepath.Join(dir, "maps"))
	out, stderr, code := verb(t, cfg, "resync")
	if code != 0 {
		t.Fatalf("resync exit %d\n%s%s", code, out, stderr)
	}
	for _, want := range []string{fmt.Sprintf("read %d entries", users+101), "aliases: maps rebuilt", "homeserver: maps rebuilt"} {
		if !strings.Contains(out, want) {
			t.Errorf("resync output lacks %q:\n%s", want, out)
		}
	}
	again := snapshotMaps(t, filepath.Join(dir, "maps"))
	for name, src := range live {
		if !bytes.Equal(src, again[name]) {
			t.Errorf("map %s differs between live sync (%d bytes) and resync (%d bytes)", name, len(src), len(again[name]))
		}
	}
	if !bytes.Contains(live["transport"], []byte("remote@example.org smtp:[other.example.org]")) {
		t.Errorf("transport map lacks the remote user:\n%s", live["transport"])
	}
	_ = ldap
	if o, _, code := verb(t, cfg, "check"); code != 0 {
		t.Errorf("check after resync: exit %d\n%.2000s", code, o)
	}
}

// bigDirectory starts a slapd preloaded with users users in 100 groups (20
// members, every fifth nesting the one before) and one user homed on
// another host, and writes a config for the map handlers.
func bigDirectory(t testing.TB, users int) (*testenv.Slapd, string, string) {
	base := "dc=example,dc=org"
	ldif := testenv.GenerateLDIF(t, base, testenv.DirectoryShape{Users: users, Groups: 100, Members: 20, Nested: 5})
	ldap := testenv.StartSlapdWith(t, testenv.SlapdOptions{Preload: ldif})
	if ldap.BaseDN != base {
		t.Fatalf("slapd base %s, generated for %s", ldap.BaseDN, base)
	}
	ldap.AddUser(t, "remote", "remote@example.org", map[string][]string{"univentionMailHomeServer": {"other.example.org"}})
	cfg, dir := verbConfig(t, ldap, nil, []string{"aliases", "homeserver"}, "metrics:\n  listen: \"off\"\n")
	return ldap, cfg, dir
}

// waitCheck waits until `mailsync check` passes, polling gently: each run
// reads the whole directory.
func waitCheck(t testing.TB, cfg string, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, func() error {
		if o, _, code := verb(t, cfg, "check"); code != 0 {
			time.Sleep(500 * time.Millisecond)
			return fmt.Errorf("not in step yet: %.500s", o)
		}
		return nil
	})
}

func snapshotMaps(t testing.TB, mapDir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, name := range []string{"virtual_alias", "virtual_mailbox", "virtual_domains", "transport"} {
		b, err := os.ReadFile(filepath.Join(mapDir, name))
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	return out
}

// TestReplayReappliesEvents: after `replay --from 1` the running daemon's
// aliases handler applies every event again (the metrics count them) and a
// map deleted by hand is back; a restarted daemon keeps the rewound
// consumer and goes on following the directory.
func TestReplayReappliesEvents(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	alice := ldap.AddUser(t, "alice", "alice@example.org", nil)
	ldap.AddUser(t, "bob", "bob@example.org", nil)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg, dir := verbConfig(t, ldap, nil, []string{"aliases"}, "metrics:\n  listen: "+metricsAddr+"\n")
	stop := startDaemon(t, cfg)
	mailboxMap := filepath.Join(dir, "maps", "virtual_mailbox")
	applied := func() int {
		body, err := httpGet("http://" + metricsAddr + "/metrics")
		if err != nil {
			return -1
		}
		m := regexp.MustCompile(`mailsync_events_total\{handler="aliases",result="applied"\} (\d+)`).FindStringSubmatch(body)
		if m == nil {
			return 0
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	// The first start loads the directory whole; its consumer starts
	// after what the load covers, so none of the two events is applied.
	testenv.Eventually(t, 15*time.Second, func() error {
		if b, err := os.ReadFile(mailboxMap); err != nil || !strings.Contains(string(b), "bob@example.org") {
			return fmt.Errorf("virtual_mailbox not loaded yet: %v", err)
		}
		return nil
	})
	ldap.Modify(t, alice, map[string][]string{"mailPrimaryAddress": {"alicia@example.org"}})
	testenv.Eventually(t, 15*time.Second, func() error {
		if n := applied(); n != 1 {
			return fmt.Errorf("%d events applied, want 1", n)
		}
		return nil
	})
	for _, f := range []string{mailboxMap, mailboxMap + ".db"} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	out, stderr, code := verb(t, cfg, "replay", "--from", "2")
	if code != 0 || !strings.Contains(out, "aliases-mail_example_org: re-applying events from seq 2") {
		t.Fatalf("replay exit %d:\n%s%s", code, out, stderr)
	}
	testenv.Eventually(t, 15*time.Second, func() error {
		if n := applied(); n != 3 {
			return fmt.Errorf("%d events applied, want 3 (1 + the 2 from seq 2)", n)
		}
		b, err := os.ReadFile(mailboxMap)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "alicia@example.org") || strings.Contains(string(b), "alice@example.org") {
			return fmt.Errorf("virtual_mailbox after replay:\n%s", b)
		}
		return nil
	})
	if _, err := os.Stat(mailboxMap + ".db"); err != nil {
		t.Errorf("virtual_mailbox.db not rebuilt: %v", err)
	}

	// Bad positions are usage errors.
	for _, from := range []string{"0", "yesterday", "999"} {
		if _, _, code := verb(t, cfg, "replay", "--from", from); code != 2 {
			t.Errorf("replay --from %s: exit %d, want 2", from, code)
		}
	}
	// By time: everything since the start of the test.
	if out, stderr, code := verb(t, cfg, "replay", "--from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "--handler", "aliases"); code != 0 {
		t.Fatalf("replay by time: exit %d:\n%s%s", code, out, stderr)
	}
	testenv.Eventually(t, 15*time.Second, func() error {
		if n := applied(); n != 6 {
			return fmt.Errorf("%d events applied, want 6 (3 + all 3 again)", n)
		}
		return nil
	})

	// A restart takes the rewound consumer as it is and follows on.
	stop()
	startDaemon(t, cfg)
	ldap.AddUser(t, "dave", "dave@example.org", nil)
	testenv.Eventually(t, 15*time.Second, func() error {
		b, err := os.ReadFile(mailboxMap)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "dave@example.org") {
			return errors.New("dave not in virtual_mailbox after the restart")
		}
		return nil
	})
}

// TestPlanShowsWhatAChangeWouldDo: an address rename, a group membership
// change, a home-server change and a modrdn, planned against the entries
// the running daemon's listener stored, each show the mailbox action with
// its paths and the map keys that would change; nothing changes on disk.
func TestPlanShowsWhatAChangeWouldDo(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	alice := ldap.AddUser(t, "alice", "alice@example.org", nil)
	ldap.AddUser(t, "bob", "bob@example.org", nil)
	ldap.AddUser(t, "carol", "carol@example.org", nil)
	dave := ldap.AddUser(t, "dave", "dave@example.org", nil)
	ldap.AddGroup(t, "staff", "staff@example.org", []string{alice, dave}, nil)
	vc := verbBuilder(t, ldap, nil, []string{"aliases", "homeserver"})
	cfg, dir := vc.Write(""), vc.Dir()
	startDaemon(t, cfg)
	waitCheck(t, cfg, 30*time.Second)
	// plan runs with the mailbox handler too: it only reads the spool.
	planCfg := vc.Handlers("mailbox", "aliases", "homeserver").Write("plan.yaml")
	spool := filepath.Join(dir, "spool", "example.org")
	os.MkdirAll(filepath.Join(spool, "alice", "Maildir"), 0o700)
	mapsBefore := snapshotMaps(t, filepath.Join(dir, "maps"))

	base := ldap.BaseDN
	change := filepath.Join(dir, "change.ldif")
	os.WriteFile(change, []byte(`version: 1
# an address rename
dn: uid=alice,ou=people,`+base+`
changetype: modify
replace: mailPrimaryAddress
mailPrimaryAddress: alicia@example.org
-
replace: description
description: not followed
-

dn: cn=staff,ou=groups,`+base+`
changetype: modify
add: uniqueMember
uniqueMember: uid=bob,ou=people,`+base+`
-

dn: UID=Carol, ou=people,`+base+`
changetype: modify
replace: univentionMailHomeServer
univentionMailHomeServer: other.example.org

dn: uid=dave,ou=people,`+base+`
changetype: modrdn
newrdn: uid=david
deleteoldrdn: 1
`), 0o600)
	out, stderr, code := verb(t, planCfg, "plan", "-f", change)
	if code != 0 {
		t.Fatalf("plan exit %d:\n%s%s", code, out, stderr)
	}
	for _, want := range []string{
		// the rename
		"event: modify user uid=alice,ou=people," + base + "; mailPrimaryAddress [alice@example.org] -> [alicia@example.org]",
		"mailbox: move " + filepath.Join(spool, "alice") + " -> " + filepath.Join(spool, "alicia") + ", mail kept (reference §1.3 branch 4)",
		"virtual_mailbox: - alice@example.org (was alice@example.org)",
		"virtual_mailbox: + alicia@example.org alicia@example.org",
		"virtual_alias: ~ staff@example.org alice@example.org,dave@example.org -> alicia@example.org,dave@example.org",
		// the membership change
		"virtual_alias: ~ staff@example.org alicia@example.org,dave@example.org -> alicia@example.org,bob@example.org,dave@example.org",
		// the home-server change
		"mailbox: keep " + filepath.Join(spool, "carol") + " on disk (mail/dovecot/mailbox/delete=no)",
		"transport: + carol@example.org smtp:[other.example.org]",
		"event: modify user uid=carol,ou=people," + base + "; univentionMailHomeServer +[other.example.org]",
		// the modrdn: staff still lists dave's old DN
		"event: modify user uid=david,ou=people," + base + " (was uid=dave,ou=people," + base + "); uid [dave] -> [david]",
		"virtual_alias: ~ staff@example.org alicia@example.org,bob@example.org,dave@example.org -> alicia@example.org,bob@example.org",
		"nothing was changed (plan only)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q", want)
		}
	}
	if strings.Count(out, "homeserver: no map changes") != 3 {
		t.Errorf("want homeserver unchanged by 3 of the 4 changes")
	}
	if t.Failed() {
		t.Logf("plan output:\n%s", out)
	}
	// Nothing happened.
	if _, err := os.Stat(filepath.Join(spool, "alicia")); err == nil {
		t.Errorf("plan created a home")
	}
	for name, src := range snapshotMaps(t, filepath.Join(dir, "maps")) {
		if !bytes.Equal(src, mapsBefore[name]) {
			t.Errorf("plan changed map %s", name)
		}
	}
}

// TestCheckTellsKeptFromDrift: under the default delete=no, a deleted
// user's home stays on disk; check lists it as kept by policy and exits 0.
// With delete=yes the same home is drift (exit 1): the handler would have
// removed it.
func TestCheckTellsKeptFromDrift(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: mailHost})
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	bob := ldap.AddUser(t, "bob", "bob@example.org", nil)
	vc := verbBuilder(t, ldap, dc, []string{"mailbox"})
	cfg := vc.Write("")
	stop := startDaemon(t, cfg)
	waitCheck(t, cfg, 30*time.Second)
	ldap.Delete(t, bob)
	bobHome := dc.Home("bob@example.org")
	testenv.Eventually(t, 30*time.Second, func() error {
		out, _, code := verb(t, cfg, "check")
		if code != 0 || !regexp.MustCompile(`(?m)^kept by policy\s+`+regexp.QuoteMeta(bobHome)+`\s.*`+regexp.QuoteMeta(bob)).MatchString(out) {
			return fmt.Errorf("check exit %d:\n%s", code, out)
		}
		if !strings.Contains(out, "everything agrees") || !strings.Contains(out, "1 homes kept by policy") {
			return fmt.Errorf("check output:\n%s", out)
		}
		return nil
	})
	stop()
	if st, err := os.Stat(bobHome); err != nil || !st.IsDir() {
		t.Fatalf("bob's home went although delete=no: %v", err)
	}
	// The same spool under delete=yes: the home is drift.
	yes := vc.Policy("mail/dovecot/mailbox/delete", "yes").Write("delete-yes.yaml")
	out, _, code := verb(t, yes, "check")
	if code != 1 || !regexp.MustCompile(`(?m)^undeleted mailbox\s+`+regexp.QuoteMeta(bobHome)+`\s`).MatchString(out) {
		t.Errorf("check under delete=yes: exit %d, want 1 naming %s:\n%s", code, bobHome, out)
	}
}
