package mailbox_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"mailsync/internal/testenv"
	"mailsync/listener"
)

// TestNewAddressUsedBeforeRename: between the directory change and the
// rename, a login and a delivery at the new address make Dovecot create its
// home. UCS refuses the rename for good; mailsync takes the new home over:
// the old mail and the message delivered in between are all at the new
// address afterwards. A leftover home from before the change (a reused
// address) is still refused.
func TestNewAddressUsedBeforeRename(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: true}, testenv.DovecotOptions{}, true)
	newAddressUsedBeforeRename(t, e, e.ldap, 0)
}

// TestNewAddressUsedBeforeRename389DS is the same on 389-DS, whose changes
// have no CSN: the time the takeover compares comes from the change id the
// listener makes of the entry's modifyTimestamp, which has whole seconds,
// so a leftover must be a second older to count as one.
func TestNewAddressUsedBeforeRename389DS(t *testing.T) {
	t.Parallel()
	ds := testenv.StartDS389(t).Tree(t, "race")
	e := newEnvOn(t, ds, listener.DS389{}, policy{rename: true}, testenv.DovecotOptions{}, true)
	newAddressUsedBeforeRename(t, e, ds, time.Second)
}

// newAddressUsedBeforeRename runs the race against directory d, whose
// change times have precision coarse (0: finer than the clock slack).
func newAddressUsedBeforeRename(t *testing.T, e *env, d testenv.LDAPServer, coarse time.Duration) {
	dn := d.AddUser(t, "rita", "rita@example.org", nil)
	e.created(t, "rita@example.org")
	e.fill(t, "rita@example.org")
	e.p.Settled(t)

	e.p.StopRunner()
	d.Modify(t, dn, map[string][]string{"mailPrimaryAddress": {"rita.new@example.org"}})
	e.dc.MailboxSummary(t, "rita.new@example.org") // a login at the new address
	e.dc.Deliver(t, "rita.new@example.org", "arrived in between")
	if !dirExists(e.dc.Home("rita.new@example.org")) {
		t.Fatal("Dovecot did not create the new home; the test does not test the race")
	}
	e.p.StartRunner()
	e.p.Settled(t)
	if dl := deadLetters(t, e.p); len(dl) > 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
	want := map[string]testenv.FolderSummary{}
	for k, v := range filled {
		want[k] = v
	}
	want["INBOX"] = testenv.FolderSummary{Messages: 4}
	e.wantFolders(t, "rita.new@example.org", want)
	if dirExists(e.dc.Home("rita@example.org")) {
		t.Errorf("old home still there")
	}

	// A home at the target that predates the change is not taken over.
	dn2 := d.AddUser(t, "sam", "sam@example.org", nil)
	e.created(t, "sam@example.org")
	e.dc.Deliver(t, "sam@example.org", "sam's mail")
	leftover := e.dc.Home("old.owner@example.org")
	if err := os.MkdirAll(filepath.Join(leftover, "Maildir", "new"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(leftover, "Maildir", "new", "1.old"), []byte("Subject: old\r\n\r\nold\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.p.Settled(t)
	time.Sleep(2500*time.Millisecond + coarse) // older than the clock slack mailsync allows
	d.Modify(t, dn2, map[string][]string{"mailPrimaryAddress": {"old.owner@example.org"}})
	e.p.Settled(t)
	if d := deadFor(t, e.p, dn2); d.Reason == "" {
		t.Fatalf("renaming onto a leftover home was not refused")
	}
	if mailFiles(t, leftover) != 1 || mailFiles(t, e.dc.Home("sam@example.org")) != 1 {
		t.Errorf("a refused rename touched mail: leftover %d, sam %d", mailFiles(t, leftover), mailFiles(t, e.dc.Home("sam@example.org")))
	}
}
