package mailbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/event"
	"mailsync/fault"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
)

// TestPathTricks: addresses that would steer a path out of the spool, and a
// symlink in the spool leading out, give a permanent error naming the DN
// (dead-lettered through the pipeline, or returned when LDAP itself refuses
// the value) and touch nothing: the spool, the index root and a decoy dir
// outside are walked before and after.
func TestPathTricks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: true, delete: true}, testenv.DovecotOptions{SeparateIndex: true}, true)
	l := e.ldap
	victim := l.AddUser(t, "victim", "victim@example.org", nil)
	e.created(t, "victim@example.org")
	e.fill(t, "victim@example.org")

	outside := filepath.Join(e.dc.Dir, "outside")
	os.MkdirAll(filepath.Join(outside, "bob", "Maildir", "cur"), 0o700)
	os.WriteFile(filepath.Join(outside, "bob", "Maildir", "cur", "precious"), []byte("do not touch"), 0o600)
	if err := os.Symlink(outside, filepath.Join(e.dc.Spool, "evil.org")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(e.dc.IndexRoot, "evil.org")); err != nil {
		t.Fatal(err)
	}
	roots := []string{e.dc.Spool, e.dc.IndexRoot, outside}
	before := map[string]tree{}
	for _, r := range roots {
		before[r] = snapshot(t, r)
	}

	cases := []string{
		"../evil@example.org", "..@example.org", "a/b@example.org", "x@../../outside", "x@example.org/../..",
		".hidden@example.org", "tab\there@example.org", "nl\nx@example.org", "sp ace@example.org",
		"two@at@example.org", "@example.org", "nolocal@", "noat",
		strings.Repeat("l", 65) + "@example.org",
		"x@" + strings.Repeat("d", 250) + ".org",
		"bob@evil.org", // valid, but the domain dir is a symlink leading out
		"nul\x00@example.org",
	}
	var viaLDAP []string
	ctx := context.Background()
	for i, addr := range cases {
		uid := fmt.Sprintf("p%02d", i)
		dn := l.UserDN(uid)
		err := l.TryAdd(t, dn, map[string][]string{
			"objectClass": {"inetOrgPerson", "posixAccount", "univentionMail"}, "uid": {uid}, "cn": {uid}, "sn": {uid},
			"uidNumber": {fmt.Sprint(30000 + i)}, "gidNumber": {"5000"}, "homeDirectory": {"/home/" + uid},
			"mailPrimaryAddress": {addr},
		})
		if err == nil {
			viaLDAP = append(viaLDAP, dn)
			continue
		}
		// LDAP refused the value (e.g. NUL): the handler must still refuse it.
		ev := event.Event{Op: event.OpAdd, Kind: event.KindUser, UUID: fmt.Sprintf("00000000-0000-0000-0000-%012d", i), DN: dn,
			New: event.Attrs{event.AttrPrimaryAddress: {addr}}}
		herr := e.h.Handle(ctx, ev)
		if !fault.IsPermanent(herr) || !strings.Contains(herr.Error(), dn) {
			t.Errorf("address %q (refused by LDAP: %v): handler returned %v, want a permanent error naming %s", addr, err, herr, dn)
		}
	}
	// A valid user renamed to a path trick, and the symlinked user deleted.
	l.Modify(t, victim, map[string][]string{"mailPrimaryAddress": {"../victim@example.org"}})
	viaLDAP = append(viaLDAP, victim)
	e.settledAfter(t, 1, len(viaLDAP))
	for _, dn := range viaLDAP {
		dl := deadFor(t, e.p, dn)
		if !strings.Contains(dl.Reason, dn) {
			t.Errorf("dead letter for %s does not name it: %s", dn, dl.Reason)
		}
	}
	if len(viaLDAP) < 10 {
		t.Errorf("only %d cases went through LDAP: %v", len(viaLDAP), viaLDAP)
	}
	for _, r := range roots {
		if d := before[r].diff(snapshot(t, r)); d != "" {
			t.Errorf("%s changed:\n%s", r, d)
		}
	}
	if p := e.h.Pending(); len(p) > 0 {
		t.Errorf("intent records left: %v", p)
	}
}

// TestDovecotDownDuringRename: with Dovecot stopped, the rename is retried
// (nothing moves without the kick); Dovecot started 5 s later, the rename
// completes by itself with every message, folder and flag.
func TestDovecotDownDuringRename(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: true}, testenv.DovecotOptions{SeparateIndex: true}, true)
	dn := e.ldap.AddUser(t, "anna", "anna@example.org", nil)
	e.created(t, "anna@example.org")
	e.fill(t, "anna@example.org")
	e.dc.Stop(t)
	e.ldap.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {"anna.new@example.org"}})
	time.Sleep(5 * time.Second)
	if !dirExists(e.dc.Home("anna@example.org")) || dirExists(e.dc.Home("anna.new@example.org")) {
		t.Errorf("home moved while Dovecot was down (no kick possible)")
	}
	e.dc.Start(t)
	e.p.Settled(t)
	e.wantFolders(t, "anna.new@example.org", filled)
	if dirExists(e.dc.Home("anna@example.org")) {
		t.Errorf("old home still there")
	}
	if dl := deadLetters(t, e.p); len(dl) > 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

var errCrash = errors.New("simulated crash")

// crashAndRecover handles ev with a handler that crashes at step (with
// renames failing EXDEV when cross, forcing the copy), then, as after a
// restart, a fresh handler's Load and the redelivered event; it says what
// did not go as it should.
func (e *env) crashAndRecover(t *testing.T, ev event.Event, step string, cross bool) error {
	t.Helper()
	ctx := context.Background()
	hit := false
	crashing := e.handler(t, mailbox.Hooks{At: func(s string) error {
		if s == step {
			hit = true
			return errCrash
		}
		return nil
	}})
	if cross {
		mailbox.SetRename(crashing, func(from, to string) error {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EXDEV}
		})
	}
	if err := crashing.Handle(ctx, ev); !errors.Is(err, errCrash) || !hit {
		return fmt.Errorf("first run returned %v, want the simulated crash", err)
	}
	if len(crashing.Pending()) != 1 {
		return errors.New("no intent record after the crash")
	}
	fresh := e.handler(t, mailbox.Hooks{})
	if err := fresh.Load(ctx, nil); err != nil {
		return fmt.Errorf("load: %v", err)
	}
	if err := fresh.Handle(ctx, ev); err != nil { // the unacked event comes again
		return fmt.Errorf("redelivery: %v", err)
	}
	if p := fresh.Pending(); len(p) > 0 {
		return fmt.Errorf("intents left: %v", p)
	}
	return nil
}

// TestCrashAtEveryStep stops a rename (and a delete) at every step, as a
// crash would, then starts a fresh handler: Load plus the redelivered
// event complete the work. Run for rename(2) and for the
// cross-filesystem copy (rename forced to fail with EXDEV).
func TestCrashAtEveryStep(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: true, delete: true}, testenv.DovecotOptions{SeparateIndex: true}, false)
	ctx := context.Background()
	type tc struct {
		step  string
		cross bool
	}
	var cases []tc
	for _, s := range mailbox.Steps {
		switch {
		case strings.HasSuffix(s, "-copied"), strings.HasSuffix(s, "-swapped"):
			cases = append(cases, tc{s, true})
		case strings.HasPrefix(s, "move:"):
			cases = append(cases, tc{s, false})
			if s == "move:intent" || s == "move:flushed" {
				cases = append(cases, tc{s, true})
			}
		default:
			cases = append(cases, tc{s, false})
		}
	}
	for i, c := range cases {
		name := fmt.Sprintf("%s cross-fs=%v", c.step, c.cross)
		uid := fmt.Sprintf("c%02d", i)
		oldAddr, newAddr := uid+"@example.org", uid+"new@example.org"
		uuid := fmt.Sprintf("11111111-0000-0000-0000-%012d", i)
		dn := e.ldap.AddUser(t, uid, oldAddr, nil)
		a := func(addr string) event.Attrs {
			return event.Attrs{event.AttrObjectClass: {"univentionMail"}, event.AttrUID: {uid}, event.AttrPrimaryAddress: {addr}}
		}
		if err := e.h.Handle(ctx, event.Event{Op: event.OpAdd, Kind: event.KindUser, UUID: uuid, DN: dn, New: a(oldAddr)}); err != nil {
			t.Fatalf("%s: create: %v", name, err)
		}
		e.fill(t, oldAddr)
		var ev event.Event
		if strings.HasPrefix(c.step, "delete:") {
			e.ldap.Delete(t, dn)
			ev = event.Event{Op: event.OpDelete, Kind: event.KindUser, UUID: uuid, DN: dn, Old: a(oldAddr)}
		} else {
			e.ldap.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {newAddr}})
			ev = event.Event{Op: event.OpModify, Kind: event.KindUser, UUID: uuid, DN: dn, Old: a(oldAddr), New: a(newAddr)}
		}
		if err := e.crashAndRecover(t, ev, c.step, c.cross); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		oldHome, newHome := e.dc.Home(oldAddr), e.dc.Home(newAddr)
		oldIndex := filepath.Join(e.dc.IndexRoot, "example.org", uid)
		if dirExists(oldHome) || dirExists(oldIndex) {
			t.Errorf("%s: old home or index still there", name)
		}
		if ev.Op == event.OpDelete {
			if dirExists(newHome) {
				t.Errorf("%s: home reappeared", name)
			}
			continue
		}
		if got := e.dc.MailboxSummary(t, newAddr); !sameFolders(got, filled) {
			t.Errorf("%s: %s over IMAP: %v, want %v", name, newAddr, got, filled)
		}
		if n := mailFiles(t, newHome); n != 4 {
			t.Errorf("%s: %d message files at the new home, want 4 (in exactly one place)", name, n)
		}
	}
	for _, r := range []string{e.dc.Spool, e.dc.IndexRoot} {
		filepath.Walk(r, func(p string, info os.FileInfo, err error) error {
			if strings.Contains(filepath.Base(p), ".mailsync-copy-") {
				t.Errorf("staging copy left: %s", p)
			}
			return nil
		})
		if ents, _ := os.ReadDir(filepath.Join(r, ".mailsync-trash")); len(ents) > 0 {
			t.Errorf("trash not emptied in %s", r)
		}
	}
}

// TestCopyAcrossFilesystems copies a maildir from the disk to tmpfs
// (/dev/shm) and verifies it, the path a move across filesystems takes;
// a copy with one byte changed fails the verify.
func TestCopyAcrossFilesystems(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	shm, err := os.MkdirTemp("/dev/shm", "mailsync-test-")
	if err != nil {
		t.Fatalf("/dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	var a, b syscall.Statfs_t
	syscall.Statfs(src, &a)
	syscall.Statfs(shm, &b)
	if a.Fsid == b.Fsid && a.Type == b.Type {
		t.Fatalf("%s and %s are on one filesystem; this test needs two", src, shm)
	}
	for _, f := range []string{"Maildir/cur/1:2,S", "Maildir/new/2", "Maildir/.Projects/cur/3:2,F", "Maildir/dovecot-uidlist"} {
		p := filepath.Join(src, f)
		os.MkdirAll(filepath.Dir(p), 0o700)
		os.WriteFile(p, []byte("message "+f), 0o600)
	}
	if err := mailbox.RenameNoReplace(src, filepath.Join(shm, "x")); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("rename across filesystems: %v, want EXDEV", err)
	}
	dst := filepath.Join(shm, "copy")
	if err := mailbox.CopyTree(src, dst); err != nil {
		t.Fatal(err)
	}
	if err := mailbox.VerifyTree(src, dst); err != nil {
		t.Fatalf("verify: %v", err)
	}
	os.WriteFile(filepath.Join(dst, "Maildir/new/2"), []byte("message Maildir/new/X"), 0o600)
	if err := mailbox.VerifyTree(src, dst); err == nil {
		t.Errorf("verify accepted a corrupted copy")
	}
	os.Remove(filepath.Join(dst, "Maildir/new/2"))
	if err := mailbox.VerifyTree(src, dst); err == nil {
		t.Errorf("verify accepted a copy missing a message")
	}
}
