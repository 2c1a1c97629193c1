package mailbox_test

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
)

// mailsyncVerb runs the real binary's verb against e's spool and
// directory; it returns stdout+stderr and the exit code.
func (e *env) mailsyncVerb(t testing.TB, bin string, args ...string) (string, int) {
	t.Helper()
	cfg := testenv.NewMailsyncConfig(t, "").Set("host", host).Handlers("mailbox").Slapd(e.ldap).Dovecot(e.dc).Write("")
	var out bytes.Buffer
	cmd := exec.Command(bin, append(args, "-c", cfg)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	}
	t.Fatalf("mailsync %v: %v", args, err)
	return "", -1
}

// TestAddressReuse: a user's address is freed (by deleting the user, or by
// renaming it) and given to a new user, under each rename/delete cell. The
// new user's INBOX never shows the old owner's messages. Where policy kept
// the old home (delete=no after a delete; rename=no, delete=no after a
// rename) it is in the attic, and `mailsync attic restore` brings the
// messages back: to a fresh address, or into a new folder of the old
// owner's current mailbox; restoring over an existing home is refused.
func TestAddressReuse(t *testing.T) {
	t.Parallel()
	bin := testenv.BuildMailsync(t)
	for _, pol := range cells {
		for _, freed := range []string{"delete", "rename"} {
			t.Run(pol.String()+",freed-by-"+freed, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t, pol, testenv.DovecotOptions{}, true)
				const shared = "shared@example.org"
				olga := e.ldap.AddUser(t, "olga", shared, nil)
				e.created(t, shared)
				e.fill(t, shared)
				seq := e.lastSeq(t)
				if freed == "delete" {
					e.ldap.Delete(t, olga)
				} else {
					e.ldap.Modify(t, olga, map[string][]string{"mailPrimaryAddress": {"olga.new@example.org"}})
				}
				e.settledAfter(t, seq, 1)
				seq = e.lastSeq(t)
				nina := e.ldap.AddUser(t, "nina", shared, nil)
				e.settledAfter(t, seq, 1)
				var ninaUUID string
				for _, en := range e.ldap.Entries(t) {
					if en.DN == nina {
						ninaUUID = en.UUID
					}
				}
				if o, ok := mailbox.ReadOwner(e.dc.Home(shared)); !ok || o.UUID != ninaUUID {
					t.Fatalf("home of %s owned by %+v, want nina (%s)", shared, o, ninaUUID)
				}
				// The new user sees an empty mailbox, logging in with her own password.
				e.wantFolders(t, shared, empty)
				if err := e.dc.Login(shared, "secret"); err != nil {
					t.Errorf("nina's login: %v", err)
				}
				if n := len(deadLetters(t, e.p)); n != 0 {
					t.Errorf("%d dead letters: %+v", n, deadLetters(t, e.p))
				}

				attic, err := mailbox.ListAttic(mustLayout(t, e.dc.MailHome))
				if err != nil {
					t.Fatal(err)
				}
				kept := !pol.delete && (freed == "delete" || !pol.rename)
				switch {
				case freed == "rename" && pol.rename:
					e.wantFolders(t, "olga.new@example.org", filled)
					if len(attic) != 0 {
						t.Errorf("attic holds %d homes, want none (the mail moved with olga)", len(attic))
					}
					return
				case !kept:
					if len(attic) != 0 {
						t.Errorf("attic holds %d homes, want none (delete=yes removed the home)", len(attic))
					}
					return
				}
				if len(attic) != 1 || attic[0].Messages != 4 || attic[0].Owner.DN != olga || attic[0].Owner.Address != shared {
					t.Fatalf("attic %+v, want olga's home with 4 messages", attic)
				}
				src := attic[0].Path
				out, code := e.mailsyncVerb(t, bin, "attic", "list")
				if code != 0 || !strings.Contains(out, src) || !strings.Contains(out, olga) {
					t.Errorf("attic list (exit %d):\n%s", code, out)
				}
				// Never over a home that exists.
				before := snapshot(t, e.dc.Home(shared))
				if out, code := e.mailsyncVerb(t, bin, "attic", "restore", src, "--to", shared); code == 0 {
					t.Errorf("restore over nina's home succeeded:\n%s", out)
				}
				if d := before.diff(snapshot(t, e.dc.Home(shared))); d != "" {
					t.Errorf("refused restore changed nina's home:\n%s", d)
				}
				if freed == "rename" {
					// Into a new folder of olga's current mailbox.
					out, code := e.mailsyncVerb(t, bin, "attic", "restore", src, "--to", "olga.new@example.org", "--folder", "Restored")
					if code != 0 {
						t.Fatalf("attic restore (exit %d):\n%s", code, out)
					}
					got := e.dc.MailboxSummary(t, "olga.new@example.org")
					n, flagged := 0, 0
					for name, f := range got {
						if strings.HasPrefix(name, "Restored") {
							n += int(f.Messages)
							flagged += int(f.Flagged)
						}
					}
					if n != 4 || flagged != 1 || got["INBOX"].Messages != 0 {
						t.Errorf("olga.new after restore: %v, want 4 messages (1 flagged) under Restored", got)
					}
				} else {
					// To a fresh address, then a user who gets it.
					out, code := e.mailsyncVerb(t, bin, "attic", "restore", src, "--to", "back@example.org")
					if code != 0 {
						t.Fatalf("attic restore (exit %d):\n%s", code, out)
					}
					seq := e.lastSeq(t)
					e.ldap.AddUser(t, "olgaback", "back@example.org", nil)
					e.settledAfter(t, seq, 1)
					e.wantFolders(t, "back@example.org", filled)
				}
				e.wantFolders(t, shared, empty)
				if a, _ := mailbox.ListAttic(mustLayout(t, e.dc.MailHome)); len(a) != 0 {
					t.Errorf("attic after restore: %+v", a)
				}
			})
		}
	}
}

func mustLayout(t testing.TB, tmpl string) mailbox.Layout {
	t.Helper()
	l, err := mailbox.NewLayout(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
