package mailconf

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"mailsync/address"
	"mailsync/fault"
)

// DovecotPublicFile is the fragment with the public namespaces of shared
// folders without an address (reference §2; UCS keeps their list in
// mail/dovecot/internal/sharedfolders and renders the same namespaces).
const DovecotPublicFile = "99-mailsync-public.conf"

// RenderDovecotPublic renders one Dovecot "public" namespace for each
// shared folder without an address this host serves: folders are their
// cn, "<name>@<maildomain>". A folder's mail lives in the maildir
// <publicHome>/<domain>/<name>, whose INBOX is the .INBOX folder
// (UCS: /var/spool/dovecot/public/<domain>/<name>/.INBOX); users see it as
// "<name>@<domain>/INBOX", as its ACL allows, with their own \Seen flags
// (INDEXPVT in their home).
//
// Pure, and the output is sorted, so the same folders give the same bytes
// (the drift check compares them). A name that is not an address, or that
// holds a character outside [a-z0-9._+-] (Dovecot expands % and $ and
// splits locations at ':'), is refused with an error naming it, and
// nothing is rendered.
func RenderDovecotPublic(confDir, publicHome string, folders []string) (File, error) {
	root := filepath.Clean(publicHome)
	if !filepath.IsAbs(publicHome) || root == "/" || !confSafe(root, "/ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
		return File{}, fault.Permanentf("dovecot.public_home %q: want an absolute directory below / of [A-Za-z0-9._+-/]", publicHome)
	}
	seen := map[string]bool{}
	var names []string
	var errs []error
	for _, f := range folders {
		local, domain, err := address.Split("cn", f)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("shared folder %q: %w", f, err))
			continue
		case !confSafe(local, "") || !confSafe(domain, ""):
			errs = append(errs, fmt.Errorf("shared folder %q: only a-z, 0-9 and . _ + - can name a public namespace", f))
			continue
		}
		n := local + "@" + domain
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	if len(errs) > 0 {
		return File{}, fault.Permanent(errors.Join(errs...))
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(renderedHeader("the shared folders without an address homed here, and mailsync's dovecot.public_home"))
	for i, n := range names {
		local, domain, _ := strings.Cut(n, "@")
		fmt.Fprintf(&b, "namespace mailsync_public_%d {\n", i+1)
		b.WriteString("  type = public\n  separator = /\n")
		fmt.Fprintf(&b, "  prefix = %s/\n", n)
		fmt.Fprintf(&b, "  location = maildir:%s:INDEXPVT=~/Maildir/public/%s/%s\n", filepath.Join(root, domain, local), domain, local)
		b.WriteString("  subscriptions = no\n  list = children\n}\n")
	}
	return File{Path: filepath.Join(confDir, "conf.d", DovecotPublicFile), Data: []byte(b.String()), Mode: 0o644}, nil
}

// confSafe reports whether s holds only characters that mean nothing to
// Dovecot's config parser and location syntax, and those of extra.
func confSafe(s, extra string) bool {
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', strings.ContainsRune("._+-", r), strings.ContainsRune(extra, r):
		default:
			return false
		}
	}
	return s != ""
}
