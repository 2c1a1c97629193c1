package mailbox_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailsync/dovecotadm"
	"mailsync/internal/testenv"
)

// TestMatrix runs each cell of manual Table 14.4 through the whole
// pipeline (LDAP modify -> listener -> JetStream -> runner -> handler) and
// asserts what IMAP and the disk show afterwards. In each cell it also
// shows: a username modrdn and an OU move leave the mailbox untouched; a
// mixed-case address lives at the lowercase path; an address already used
// by another user is refused, naming both DNs and paths, with nothing
// moved, merged or deleted.
func TestMatrix(t *testing.T) {
	t.Parallel()
	for _, pol := range cells {
		t.Run(pol.String(), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, pol, testenv.DovecotOptions{SeparateIndex: true}, true)
			l := e.ldap
			l.Add(t, "ou=staff,"+l.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"staff"}})
			anna := l.AddUser(t, "anna", "anna@example.org", nil)
			bert := l.AddUser(t, "bert", "bert@example.org", nil)
			cleo := l.AddUser(t, "cleo", "cleo@example.org", nil)
			dora := l.AddUser(t, "dora", "dora@example.org", nil)
			l.AddUser(t, "eve", "eve@example.org", nil)
			fritz := l.AddUser(t, "fritz", "Fritz.Mixed@Example.ORG", nil)
			e.created(t, "anna@example.org", "bert@example.org", "cleo@example.org", "dora@example.org", "eve@example.org", "fritz.mixed@example.org")
			for _, u := range []string{"anna", "bert", "cleo", "dora", "eve", "Fritz.Mixed"} {
				e.fill(t, strings.ToLower(u)+"@example.org")
			}
			oldAnna := e.dc.Home("anna@example.org")
			annaBefore := snapshot(t, oldAnna)
			bertBefore, cleoBefore := snapshot(t, e.dc.Home("bert@example.org")), snapshot(t, e.dc.Home("cleo@example.org"))
			doraBefore, eveBefore := snapshot(t, e.dc.Home("dora@example.org")), snapshot(t, e.dc.Home("eve@example.org"))

			seq := e.lastSeq(t)
			l.Modify(t, anna, map[string][]string{"mailPrimaryAddress": {"anna.new@example.org"}})
			bert2 := l.ModRDN(t, bert, "uid=bert2", "")
			cleo2 := l.ModRDN(t, cleo, "uid=cleo", "ou=staff,"+l.BaseDN)
			l.Modify(t, dora, map[string][]string{"mailPrimaryAddress": {"eve@example.org"}}) // reused
			l.Modify(t, fritz, map[string][]string{"mailPrimaryAddress": {"Fritz.New@Example.ORG"}})
			e.settledAfter(t, seq, 5)

			// The address change, as Table 14.4 says.
			newAnna := e.dc.Home("anna.new@example.org")
			if pol.rename {
				e.wantFolders(t, "anna.new@example.org", filled)
				if dirExists(oldAnna) {
					t.Errorf("old home %s still exists after a rename", oldAnna)
				}
				if dirExists(filepath.Join(e.dc.IndexRoot, "example.org", "anna")) || !dirExists(filepath.Join(e.dc.IndexRoot, "example.org", "anna.new")) {
					t.Errorf("the separate index did not move with the mailbox")
				}
			} else {
				e.wantFolders(t, "anna.new@example.org", empty)
				if pol.delete {
					if dirExists(oldAnna) {
						t.Errorf("old home %s kept although delete=yes", oldAnna)
					}
					if dirExists(filepath.Join(e.dc.IndexRoot, "example.org", "anna")) {
						t.Errorf("old index kept although delete=yes")
					}
				} else if d := annaBefore.diff(snapshot(t, oldAnna)); d != "" {
					t.Errorf("old home changed although delete=no:\n%s", d)
				}
			}
			if !dirExists(newAnna) {
				t.Errorf("no home at %s", newAnna)
			}
			if err := e.dc.Login("anna.new@example.org", "secret"); err != nil {
				t.Errorf("login by the new address: %v", err)
			}
			if err := e.dc.Login("anna@example.org", "secret"); !errors.Is(err, dovecotadm.ErrLoginFailed) {
				t.Errorf("login by the old address: %v, want refused", err)
			}

			// modrdn and OU move: untouched, under every cell.
			if d := bertBefore.diff(snapshot(t, e.dc.Home("bert@example.org"))); d != "" {
				t.Errorf("modrdn %s -> %s changed the mailbox:\n%s", bert, bert2, d)
			}
			if d := cleoBefore.diff(snapshot(t, e.dc.Home("cleo@example.org"))); d != "" {
				t.Errorf("OU move %s -> %s changed the mailbox:\n%s", cleo, cleo2, d)
			}
			e.wantFolders(t, "bert@example.org", filled)
			e.wantFolders(t, "cleo@example.org", filled)

			// Reused address: refused, naming both DNs and both paths; nothing
			// moved, merged or deleted on either side.
			dl := deadFor(t, e.p, dora)
			for _, want := range []string{dora, l.UserDN("eve"), e.dc.Home("eve@example.org")} {
				if !strings.Contains(dl.Reason, want) {
					t.Errorf("dead letter does not name %s: %s", want, dl.Reason)
				}
			}
			if pol.rename && !strings.Contains(dl.Reason, e.dc.Home("dora@example.org")) {
				t.Errorf("dead letter does not name the old path: %s", dl.Reason)
			}
			if d := doraBefore.diff(snapshot(t, e.dc.Home("dora@example.org"))); d != "" {
				t.Errorf("dora's home changed although her rename was refused:\n%s", d)
			}
			if d := eveBefore.diff(snapshot(t, e.dc.Home("eve@example.org"))); d != "" {
				t.Errorf("eve's home changed by dora taking her address:\n%s", d)
			}

			// Mixed case: lowercase paths only, before and after a rename.
			filepath.Walk(e.dc.Spool, func(p string, info os.FileInfo, err error) error {
				rel, _ := filepath.Rel(e.dc.Spool, p)
				if parts := strings.Split(rel, "/"); len(parts) <= 2 && rel != strings.ToLower(rel) {
					t.Errorf("mixed-case path in the spool: %s", p)
				}
				return nil
			})
			if pol.rename {
				e.wantFolders(t, "fritz.new@example.org", filled)
			} else {
				e.wantFolders(t, "fritz.new@example.org", empty)
			}
		})
	}
}
