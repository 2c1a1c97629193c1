package mailconf_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailsync/dovecotadm"
	"mailsync/fault"
	"mailsync/internal/testenv"
	"mailsync/mailconf"
)

func TestRenderDovecotPublic(t *testing.T) {
	f, err := mailconf.RenderDovecotPublic("/etc/dovecot", "/var/spool/dovecot/public/", []string{"Team@Example.org", "b.board@example.org", "team@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if f.Path != "/etc/dovecot/conf.d/"+mailconf.DovecotPublicFile {
		t.Errorf("path %s", f.Path)
	}
	body := string(f.Data[strings.Index(string(f.Data), "namespace"):])
	want := `namespace mailsync_public_1 {
  type = public
  separator = /
  prefix = b.board@example.org/
  location = maildir:/var/spool/dovecot/public/example.org/b.board:INDEXPVT=~/Maildir/public/example.org/b.board
  subscriptions = no
  list = children
}
namespace mailsync_public_2 {
  type = public
  separator = /
  prefix = team@example.org/
  location = maildir:/var/spool/dovecot/public/example.org/team:INDEXPVT=~/Maildir/public/example.org/team
  subscriptions = no
  list = children
}
`
	if body != want {
		t.Errorf("rendered\n%s\nwant\n%s", body, want)
	}
	empty, err := mailconf.RenderDovecotPublic("/etc/dovecot", "/var/spool/dovecot/public", nil)
	if err != nil || strings.Contains(string(empty.Data), "namespace") {
		t.Errorf("no folders: %v\n%s", err, empty.Data)
	}
	for _, bad := range [][]string{{"team"}, {"a%u@example.org"}, {"a:b@example.org"}, {"a$x@example.org"}, {"ok@example.org", "../x@example.org"}} {
		if _, err := mailconf.RenderDovecotPublic("/etc/dovecot", "/var/spool/dovecot/public", bad); err == nil || !fault.IsPermanent(err) {
			t.Errorf("%q: %v, want a permanent refusal", bad, err)
		} else if !strings.Contains(err.Error(), bad[len(bad)-1]) {
			t.Errorf("%q: %v does not name the folder", bad, err)
		}
	}
	for _, root := range []string{"relative/public", "/", "/var/spool/%d"} {
		if _, err := mailconf.RenderDovecotPublic("/etc/dovecot", root, nil); err == nil {
			t.Errorf("public home %q accepted", root)
		}
	}
}

// A rendered public namespace is what Dovecot serves: a folder's mail at
// <public home>/<domain>/<name>/.INBOX is "<name>@<domain>/INBOX" over
// IMAP for a user its ACL (set through doveadm as the rendered ACL user,
// as the mailbox handler does) lets read, and for no one else. The ACL
// user is doveadm's only: it cannot log in over IMAP.
func TestDovecotServesPublicNamespace(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "erin", "erin@example.org", nil)
	ldap.AddUser(t, "finn", "finn@example.org", nil)
	// Dovecot runs mail processes as its mail user: the public home is
	// made outside the test's private temp dir and given to that user.
	top, err := os.MkdirTemp("", "public-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	root := filepath.Join(top, "public")
	box := filepath.Join(root, "example.org", "team")
	for _, d := range []string{"cur", "new", "tmp", ".INBOX/cur", ".INBOX/new", ".INBOX/tmp"} {
		if err := os.MkdirAll(filepath.Join(box, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	msg := "From: a@example.org\r\nTo: team@example.org\r\nSubject: in the public folder\r\n\r\nhello\r\n"
	if err := os.WriteFile(filepath.Join(box, ".INBOX", "new", "1.public"), []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{SharedFolders: true})
	h := hostFor(d, "")
	h.Target.PublicHome = root
	install := func(folders ...string) []string {
		t.Helper()
		p, err := h.PublicProduct(folders)
		if err != nil {
			t.Fatal(err)
		}
		before := strings.Count(dovecotLogs(t, d), "reloading configuration")
		changed, err := mailconf.Install(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		if len(changed) > 0 {
			waitReloaded(t, d, before)
		}
		return changed
	}
	if changed := install("team@example.org"); len(changed) != 2 {
		t.Fatalf("installed %v, want the public fragment and the ACL user's userdb", changed)
	}
	if changed := install("team@example.org"); len(changed) != 0 {
		t.Errorf("the same folders again wrote %v", changed)
	}
	if err := filepath.Walk(top, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			err = os.Lchown(p, d.UID, d.GID)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	adm, err := dovecotadm.New(d.DoveadmURL, d.APIKey, dovecotadm.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if got := d.SubjectsIn(t, "erin@example.org", "team@example.org/INBOX"); len(got) != 0 {
		t.Fatalf("erin reads %q without a right", got)
	}
	if err := adm.SetACL(ctx, mailconf.DovecotPublicACLUser, "team@example.org/INBOX", "user=erin@example.org", []string{"lookup", "read"}); err != nil {
		t.Fatal(err)
	}
	if got := d.SubjectsIn(t, "erin@example.org", "team@example.org/INBOX"); len(got) != 1 || got[0] != "in the public folder" {
		t.Errorf("erin, granted read, sees %q\n%s", got, d.Log())
	}
	if got := d.SubjectsIn(t, "finn@example.org", "team@example.org/INBOX"); len(got) != 0 {
		t.Errorf("finn, not granted, reads %q", got)
	}
	if err := adm.CreateMailbox(ctx, mailconf.DovecotPublicACLUser+"x", "INBOX"); !errors.Is(err, dovecotadm.ErrUnknownUser) {
		t.Errorf("a user next to the ACL user: %v, want unknown (the userdb holds one user)", err)
	}
	if err := adm.SetACL(ctx, mailconf.DovecotPublicACLUser, "team@example.org/INBOX", "user=erin@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if got := d.SubjectsIn(t, "erin@example.org", "team@example.org/INBOX"); len(got) != 0 {
		t.Errorf("erin reads %q after her right was removed", got)
	}
	if err := adm.SetACL(ctx, mailconf.DovecotPublicACLUser, "team@example.org/INBOX", "user=erin@example.org", []string{"lookup", "read"}); err != nil {
		t.Fatal(err)
	}
	if changed := install(); len(changed) != 1 {
		t.Fatalf("installed %v, want the emptied public fragment", changed)
	}
	if got := d.SubjectsIn(t, "erin@example.org", "team@example.org/INBOX"); len(got) != 0 {
		t.Errorf("erin reads %q once the namespace is gone", got)
	}
	if _, err := os.Stat(filepath.Join(box, ".INBOX", "new", "1.public")); err != nil {
		t.Errorf("the folder's mail: %v", err)
	}
}
