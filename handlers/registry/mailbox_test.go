package registry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailsync/config"
	"mailsync/event"
	"mailsync/mailconf"
)

// TestCheckPublicNamespaces: with configure listing dovecot, check reports
// a Dovecot whose installed public namespaces are not those of the public
// folders homed here (a folder it does not serve), and nothing once they
// are; a public folder homed on another host needs no namespace here.
func TestCheckPublicNamespaces(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"spool", "public", "conf/conf.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c, err := config.Parse([]byte(`host: mx.example.org
ldap: {url: "ldap://127.0.0.1", base_dn: "dc=example,dc=org"}
handlers: [mailbox]
configure: [dovecot]
dovecot:
  doveadm_url: http://127.0.0.1:1
  mail_home: `+dir+`/spool/%Ld/%Ln
  public_home: `+dir+`/public
  conf_dir: `+dir+`/conf
  unit_dropin: none
`), dir, Known{})
	if err != nil {
		t.Fatal(err)
	}
	folder := func(uuid, cn, home string) event.Entry {
		return event.Entry{UUID: uuid, DN: "cn=" + cn + ",dc=example,dc=org", Kind: event.KindFolder,
			Attrs: event.Attrs{event.AttrObjectClass: {"univentionMailSharedFolder"}, event.AttrCN: {cn}, event.AttrHomeServer: {home}}}
	}
	entries := []event.Entry{folder("f1", "board@example.org", "mx.example.org"), folder("f2", "far@example.org", "other.example.org")}
	install := func(folders ...string) {
		t.Helper()
		p, err := mailconf.HostFor(c).PublicProduct(folders)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range p.Files {
			if err := os.WriteFile(f.Path, f.Data, f.Mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	drift := func() []string {
		t.Helper()
		got, err := checkMailbox(c, entries)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range got.Found {
			if strings.HasPrefix(d.Kind, "dovecot-public") {
				out = append(out, filepath.Base(d.What)+": "+d.Detail)
			}
		}
		return out
	}
	if got := drift(); len(got) != 2 {
		t.Errorf("nothing installed: drift %q, want the fragment and the ACL user's userdb missing", got)
	}
	all := entries
	entries = entries[1:]
	if got := drift(); len(got) != 0 {
		t.Errorf("no public folder here, nothing installed: drift %q", got)
	}
	entries = all
	install()
	if got := drift(); len(got) != 1 || !strings.HasPrefix(got[0], mailconf.DovecotPublicFile+": differs") {
		t.Errorf("board not served: drift %q, want the fragment differing", got)
	}
	install("board@example.org")
	if got := drift(); len(got) != 0 {
		t.Errorf("the folders homed here served: drift %q", got)
	}
}
