package mailbox

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"mailsync/address"
	"mailsync/event"
	"mailsync/fault"
)

// Shared IMAP folders (reference §2) converge like users, with their own
// desired state (folderState) and three rules of their own, applied in
// PlanFor:
//   - a folder is served by its home server only: one without
//     univentionMailHomeServer is served nowhere (a user without one is
//     served everywhere);
//   - an address change always renames, whatever
//     mail/dovecot/mailbox/rename says (UCS's force_rename; ucs-test 43
//     expects it under all four cells of Table 14.4), and the mail never
//     follows a home server change;
//   - its univentionMailACL is applied to the folder's INBOX through
//     doveadm (StepACL), entries that disappear are removed.
//
// A folder with a mailPrimaryAddress is the private mailbox of that
// address, which Dovecot's shared namespace shows as shared/<address>/. One
// without is a public folder (public.go): its mailbox is keyed
// "public/<cn>", a name no address can have, lives under the public home
// and is served by a public namespace of its own. Adding or removing the
// address moves the mail between the two (the rename rule above).

// folderState is the desired state of a shared folder entry.
func folderState(e event.Entry) State {
	st := State{DN: e.DN, Folder: true, HomeServer: address.CanonicalHost(e.Attrs.FirstLower(event.AttrHomeServer)),
		CSN: e.CSN, Refused: refused(e.Attrs)}
	if st.HomeServer != "" {
		st.Address = e.Attrs.FirstLower(event.AttrPrimaryAddress)
	}
	if st.HomeServer != "" && st.Address == "" {
		cn := e.Attrs.First(event.AttrCN)
		local, domain, err := address.PublicFolder(event.AttrCN, cn)
		st.Address = publicKey(local + "@" + domain)
		if err != nil {
			st.Address = publicKey(strings.ToLower(cn))
			if st.Refused == nil {
				st.Refused = err
			}
		}
	}
	acl, err := folderACL(e.Attrs[event.AttrACL])
	if err != nil && st.Refused == nil {
		st.Refused = err
	}
	st.ACL = acl
	return st
}

// folderRights are UDM's rights as Dovecot's (reference §2: read lrws,
// post lrwsp, append lrwspi, write lrwspite, all lrwspitekxa).
var folderRights = map[string][]string{
	"read":   {"lookup", "read", "write", "write-seen"},
	"post":   {"lookup", "read", "write", "write-seen", "post"},
	"append": {"lookup", "read", "write", "write-seen", "post", "insert"},
	"write":  {"lookup", "read", "write", "write-seen", "post", "insert", "write-deleted", "expunge"},
	"all":    {"lookup", "read", "write", "write-seen", "post", "insert", "write-deleted", "expunge", "create", "delete", "admin"},
}

// folderACL reads univentionMailACL values ("<identifier> <right>", the
// identifier may hold spaces: a group "Domain Users") into one canonical,
// comparable string "id=right\n...", sorted; "none" entries are left out
// (they remove a right). An unknown right refuses the entry.
func folderACL(values []string) (string, error) {
	m := map[string]string{}
	for _, v := range values {
		v = strings.TrimSpace(v)
		i := strings.LastIndexByte(v, ' ')
		if i <= 0 {
			return "", fault.Permanentf("%s %q: want \"<identifier> <right>\"", event.AttrACL, v)
		}
		id, right := strings.TrimSpace(v[:i]), strings.ToLower(v[i+1:])
		if _, ok := folderRights[right]; !ok && right != "none" {
			return "", fault.Permanentf("%s %q: unknown right %q (want read, post, append, write, all or none)", event.AttrACL, v, right)
		}
		if strings.ContainsAny(id, "\n=\x00") {
			return "", fault.Permanentf("%s %q: the identifier holds a line break, '=' or NUL", event.AttrACL, v)
		}
		m[strings.ToLower(id)] = right
	}
	var out []string
	for id, right := range m {
		if right != "none" {
			out = append(out, id+"="+right)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n"), nil
}

func parseFolderACL(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		if id, right, ok := strings.Cut(l, "="); ok {
			m[id] = right
		}
	}
	return m
}

// doveadmID is the ACL identifier Dovecot reads for a UDM one: with an @
// a user, anyone and authenticated as they are, anything else a group.
func doveadmID(id string) string {
	switch {
	case id == "anyone" || id == "authenticated":
		return id
	case strings.Contains(id, "@"):
		return "user=" + id
	}
	return "group=" + id
}

// setACL gives the folder's INBOX the ACL of the step: every entry set,
// every entry of the previous ACL that is gone removed. Idempotent.
func (h *Handler) setACL(ctx context.Context, ev event.Event, s Step) error {
	want, had := parseFolderACL(s.ACL), parseFolderACL(s.OldACL)
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	set := func(id string, rights []string) error {
		if publicName(s.Address) != "" {
			return h.setPublicACL(ctx, s.Address, doveadmID(id), rights)
		}
		return h.adm.SetACL(ctx, s.Address, "INBOX", doveadmID(id), rights)
	}
	for _, id := range ids {
		if err := set(id, folderRights[want[id]]); err != nil {
			return fmt.Errorf("shared folder %s: %w", where(ev), err)
		}
	}
	for id := range had {
		if _, ok := want[id]; ok {
			continue
		}
		if err := set(id, nil); err != nil {
			return fmt.Errorf("shared folder %s: %w", where(ev), err)
		}
	}
	return nil
}
