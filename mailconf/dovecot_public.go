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

// DovecotPublicACLUser is the user doveadm sets the public folders' ACLs
// as (UCS runs `doveadm acl set -u Administrator`): a public namespace is
// every user's, so any user reaches the folders, but a folder is none.
// RenderDovecotPublic gives Dovecot a doveadm-only userdb holding just
// this user, in DovecotPublicUserdb; IMAP, LMTP and logins never see it.
const DovecotPublicACLUser = "mailsync-public-acl"

// DovecotPublicUserdb is that userdb's passwd-file, in the conf dir.
const DovecotPublicUserdb = "mailsync-public.passwd"

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
	files, err := renderDovecotPublic(confDir, publicHome, folders)
	if err != nil {
		return File{}, err
	}
	return files[0], nil
}

// renderDovecotPublic is the fragment and the ACL user's passwd-file,
// whose home is a dot directory of the public home (no folder's name).
func renderDovecotPublic(confDir, publicHome string, folders []string) ([]File, error) {
	root := filepath.Clean(publicHome)
	if !filepath.IsAbs(publicHome) || root == "/" || !confSafe(root, "/ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
		return nil, fault.Permanentf("dovecot.public_home %q: want an absolute directory below / of [A-Za-z0-9._+-/]", publicHome)
	}
	seen := map[string]bool{}
	var names []string
	var errs []error
	for _, f := range folders {
		local, domain, err := address.PublicFolder("cn", f)
		if err != nil {
			errs = append(errs, fmt.Errorf("shared folder %q: %w", f, err))
			continue
		}
		n := local + "@" + domain
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	if len(errs) > 0 {
		return nil, fault.Permanent(errors.Join(errs...))
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(renderedHeader("the shared folders without an address homed here, and mailsync's dovecot.public_home"))
	userdb := filepath.Join(confDir, DovecotPublicUserdb)
	fmt.Fprintf(&b, "# doveadm sets the public folders' ACLs as %s.\nprotocol doveadm {\n  userdb {\n    driver = passwd-file\n    args = %s\n  }\n}\n",
		DovecotPublicACLUser, userdb)
	for i, n := range names {
		local, domain, _ := strings.Cut(n, "@")
		fmt.Fprintf(&b, "namespace mailsync_public_%d {\n", i+1)
		b.WriteString("  type = public\n  separator = /\n")
		fmt.Fprintf(&b, "  prefix = %s/\n", n)
		fmt.Fprintf(&b, "  location = maildir:%s:INDEXPVT=~/Maildir/public/%s/%s\n", filepath.Join(root, domain, local), domain, local)
		b.WriteString("  subscriptions = no\n  list = children\n}\n")
	}
	user := fmt.Sprintf("%s:::::%s::\n", DovecotPublicACLUser, filepath.Join(root, ".mailsync-acl-user"))
	return []File{{Path: filepath.Join(confDir, "conf.d", DovecotPublicFile), Data: []byte(b.String()), Mode: 0o644},
		{Path: userdb, Data: []byte(user), Mode: 0o644}}, nil
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
