package mailbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/rs/zerolog"

	"mailsync/dovecotadm"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/mailconf"
	"mailsync/runner"
)

const host = "mail.example.org"

// env is a slapd, a Dovecot and the whole pipeline feeding one mailbox
// handler.
type env struct {
	ldap *testenv.Slapd
	dc   *testenv.Dovecot
	adm  *dovecotadm.Client
	cfg  mailbox.Config
	h    *mailbox.Handler
	p    *testenv.Pipeline
}

// policy is one cell of the rename/delete matrix.
type policy struct{ rename, delete bool }

func (p policy) String() string {
	yn := map[bool]string{true: "yes", false: "no"}
	return "rename=" + yn[p.rename] + ",delete=" + yn[p.delete]
}

var cells = []policy{{true, false}, {true, true}, {false, false}, {false, true}}

func newEnv(t testing.TB, pol policy, opts testenv.DovecotOptions, pipeline bool) *env {
	t.Helper()
	ldap := testenv.StartSlapd(t)
	e := newEnvOn(t, ldap, listener.OpenLDAP{}, pol, opts, pipeline)
	e.ldap = ldap
	return e
}

// newEnvOn is newEnv over any directory server: Dovecot looks users up in
// dir, and the listener (of flavor) follows it. e.ldap is nil.
func newEnvOn(t testing.TB, dir testenv.LDAPServer, flavor listener.Flavor, pol policy, opts testenv.DovecotOptions, pipeline bool) *env {
	t.Helper()
	opts.FQDN = host
	dc := testenv.StartDovecot(t, dir, opts)
	adm, err := dovecotadm.New(dc.DoveadmURL, dc.APIKey, dovecotadm.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dc: dc, adm: adm}
	e.cfg = mailbox.Config{
		Host: host, MailHome: dc.MailHome, IndexHome: dc.IndexRoot + "/%Ld/%Ln", SeparateIndex: opts.SeparateIndex,
		Rename: pol.rename, Delete: pol.delete, Folders: []string{"Spam", "Ham"},
		StateDir: t.TempDir(), UID: -1, GID: -1,
		PublicHome: dc.PublicHome, ACLUser: mailconf.DovecotPublicACLUser,
	}
	if opts.SharedFolders {
		// Public folders are served through the namespaces the handler
		// installs into this Dovecot's configuration, as mailsync run does.
		e.cfg.Public = &mailconf.DovecotHost{Target: mailconf.DovecotTarget{ConfDir: dc.ConfDir, MailHome: dc.MailHome,
			IndexHome: dc.IndexRoot + "/%Ld/%Ln", PublicHome: dc.PublicHome}}
	}
	e.h = e.handler(t, mailbox.Hooks{})
	if pipeline {
		e.p = testenv.StartPipelineOn(t, dir, flavor, host, e.h)
	}
	return e
}

func (e *env) handler(t testing.TB, hooks mailbox.Hooks) *mailbox.Handler {
	t.Helper()
	h, err := mailbox.New(e.cfg, e.adm, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), hooks)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// fill gives addr 3 messages in INBOX and 1 flagged one in "Projects".
func (e *env) fill(t testing.TB, addr string) {
	t.Helper()
	for i := 1; i <= 3; i++ {
		e.dc.Deliver(t, addr, fmt.Sprintf("inbox %d", i))
	}
	c := e.dc.IMAP(t, addr)
	if err := c.Create("Projects", nil).Wait(); err != nil {
		t.Fatalf("create Projects for %s: %v", addr, err)
	}
	msg := "From: a@example.org\r\nTo: " + addr + "\r\nSubject: flagged\r\n\r\nkeep me\r\n"
	cmd := c.Append("Projects", int64(len(msg)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagFlagged}})
	if _, err := cmd.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cmd.Wait(); err != nil {
		t.Fatalf("append to Projects of %s: %v", addr, err)
	}
}

// filled is what fill leaves, as IMAP shows it (the default folders come
// from the handler's create).
var filled = map[string]testenv.FolderSummary{
	"INBOX": {Messages: 3}, "Projects": {Messages: 1, Flagged: 1}, "Spam": {}, "Ham": {},
}

var empty = map[string]testenv.FolderSummary{"INBOX": {}, "Spam": {}, "Ham": {}}

func sameFolders(got, want map[string]testenv.FolderSummary) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

func (e *env) wantFolders(t testing.TB, addr string, want map[string]testenv.FolderSummary) {
	t.Helper()
	if got := e.dc.MailboxSummary(t, addr); !sameFolders(got, want) {
		t.Errorf("%s over IMAP: %v, want %v", addr, got, want)
	}
}

// tree is a filesystem snapshot: relative path -> type, size and mode.
type tree map[string]string

func snapshot(t testing.TB, root string) tree {
	t.Helper()
	out := tree{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		size := info.Size()
		if info.IsDir() {
			size = 0
		}
		out[rel] = fmt.Sprintf("%s %d", info.Mode(), size)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}

func (a tree) diff(b tree) string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "- "+k)
		} else if v != w {
			d = append(d, fmt.Sprintf("~ %s (%s -> %s)", k, v, w))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "+ "+k)
		}
	}
	sort.Strings(d)
	return strings.Join(d, "\n")
}

// mailFiles counts the message files of a home (every folder).
func mailFiles(t testing.TB, home string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(home, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (filepath.Base(filepath.Dir(p)) == "cur" || filepath.Base(filepath.Dir(p)) == "new") {
			n++
		}
		return nil
	})
	return n
}

func dirExists(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.IsDir()
}

// deadLetters reads the dead-letter stream.
func deadLetters(t testing.TB, p *testenv.Pipeline) []runner.DeadLetter {
	t.Helper()
	ctx := context.Background()
	info, err := p.Bus.Dead.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []runner.DeadLetter
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := p.Bus.Dead.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		var d runner.DeadLetter
		if err := json.Unmarshal(m.Data, &d); err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// deadFor returns the dead letter naming dn, waiting a little for it.
func deadFor(t testing.TB, p *testenv.Pipeline, dn string) runner.DeadLetter {
	t.Helper()
	var found runner.DeadLetter
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, d := range deadLetters(t, p) {
			if d.DN == dn {
				found = d
				return nil
			}
		}
		return fmt.Errorf("no dead letter for %s", dn)
	})
	return found
}

// created waits until the handler has made addr's mailbox (its home
// carries the owner marker): Settled alone can pass before the listener
// published the event.
func (e *env) created(t testing.TB, addrs ...string) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() error {
		for _, a := range addrs {
			if _, err := os.Stat(filepath.Join(e.dc.Home(a), mailbox.MarkerFile)); err != nil {
				return fmt.Errorf("mailbox of %s not created: %v", a, err)
			}
		}
		return nil
	})
	if e.p != nil {
		e.p.Settled(t)
	}
}

// lastSeq is the stream's last sequence number.
func (e *env) lastSeq(t testing.TB) uint64 {
	t.Helper()
	info, err := e.p.Bus.Stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// settledAfter waits until n more events than at seq were published, then
// until the handler acked them all.
func (e *env) settledAfter(t testing.TB, seq uint64, n int) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() error {
		if got := e.lastSeq(t); got < seq+uint64(n) {
			return fmt.Errorf("%d of %d events published", got-seq, n)
		}
		return nil
	})
	e.p.Settled(t)
}
