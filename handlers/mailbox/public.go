package mailbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"mailsync/address"
	"mailsync/atomicfile"
	"mailsync/event"
	"mailsync/fault"
)

// Public folders: a shared folder without a mailPrimaryAddress (reference
// §2). UCS keeps its mail in /var/spool/dovecot/public/<domain>/<name>, a
// maildir whose INBOX is the .INBOX folder, and serves it through one
// Dovecot public namespace per folder, "<name>@<domain>/".
//
// Here such a folder's mailbox is keyed publicKey(cn), "public/<cn>": the
// "/" keeps the key from ever being an address, so the one plan (PlanFor)
// treats it like any other mailbox of the entry. Its home is
// <public home>/<domain>/<name> (Config.PublicHome, the layout mailconf's
// RenderDovecotPublic serves), with the same owner marker, intents and
// confinement as a user's. What differs:
//   - it is made on disk (a maildir and its .INBOX), not through doveadm:
//     the folder is no Dovecot user;
//   - adding or removing the address moves the mail: the home is renamed
//     between the two spools, then reshaped, the private Maildir becoming
//     the public .INBOX and the reverse (moveShape), so the mail, its
//     UIDs and its ACL are found at the new place;
//   - the set of public folders this host serves is recorded in the state
//     dir and installed as Dovecot's public namespaces (StepPublish, the
//     dovecot-public product) whenever it changes: after the folder's
//     mail is in place, and before it moves away;
//   - its ACL is set through doveadm on "<cn>/INBOX" as Config.ACLUser, a
//     user every public namespace is visible to (mailconf renders a
//     doveadm-only userdb for it; UCS uses Administrator).

// publicPrefix starts a public folder's mailbox key; "/" is in no address.
const publicPrefix = "public/"

func publicKey(cn string) string { return publicPrefix + cn }

// publicName is the folder name (cn) of a public key, "" for an address.
func publicName(key string) string {
	n, _ := strings.CutPrefix(key, publicPrefix)
	if n == key {
		return ""
	}
	return n
}

// PublicNamespaces makes Dovecot serve exactly the public folders given
// (their cn, "<name>@<domain>"): mailconf's dovecot-public product,
// installed and reloaded. Installing the same set again changes nothing.
type PublicNamespaces interface {
	InstallPublic(ctx context.Context, folders []string) error
}

// publicSet is the record of the public folders this host serves, by
// entryUUID: one file in the state dir, replaced atomically.
type publicSet struct {
	path string
	mu   sync.Mutex
	m    map[string]string // uuid -> cn
}

func loadPublicSet(path string) (*publicSet, error) {
	s := &publicSet{path: path, m: map[string]string{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the public folders served: %w", err)
	}
	if err := json.Unmarshal(data, &s.m); err != nil {
		return nil, fmt.Errorf("the public folders served, %s: %w", path, err)
	}
	return s, nil
}

// set records that uuid's public folder is cn ("": none) and returns the
// folders served.
func (s *publicSet) set(uuid, cn string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[uuid] != cn {
		next := maps.Clone(s.m)
		if cn == "" {
			delete(next, uuid)
		} else {
			next[uuid] = cn
		}
		data, _ := json.Marshal(next)
		if err := atomicfile.Write(s.path, data, 0o600); err != nil {
			return nil, fault.Retryable(fmt.Errorf("record the public folders served: %w", err))
		}
		s.m = next
	}
	return s.namesLocked(), nil
}

func (s *publicSet) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.namesLocked()
}

func (s *publicSet) namesLocked() []string {
	out := make([]string, 0, len(s.m))
	for _, n := range s.m {
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// publish records the entry's public folder (key "" or an address: none)
// and has Dovecot serve the folders of the record.
func (h *Handler) publish(ctx context.Context, ev event.Event, key string) error {
	names, err := h.public.set(ev.UUID, publicName(key))
	if err != nil {
		return err
	}
	return h.installPublic(ctx, names)
}

func (h *Handler) installPublic(ctx context.Context, names []string) error {
	if h.cfg.Public == nil {
		return nil
	}
	if err := h.cfg.Public.InstallPublic(ctx, names); err != nil {
		if fault.IsPermanent(err) {
			return err
		}
		return fault.Retryable(fmt.Errorf("serve the public folders %v: %w", names, err))
	}
	return nil
}

// createPublic makes the maildir of a public folder at home: the root and
// its .INBOX, owned like every home, then the owner marker.
func (h *Handler) createPublic(ev event.Event, key, home string) error {
	uid, gid := h.owner()
	if err := h.makePublicRoot(); err != nil {
		return fault.Retryable(fmt.Errorf("create public folder %s of %s: %w", home, where(ev), err))
	}
	h.fsMu.Lock()
	defer h.fsMu.Unlock()
	if m, ok := readMarker(home); ok && m.UUID != ev.UUID {
		return fault.Permanentf("create public folder %s for %s: home %s belongs to entry %s (uuid %s), "+
			"which had the address %q; not reused", publicName(key), where(ev), home, m.DN, m.UUID, m.Address)
	}
	for _, d := range []string{"cur", "new", "tmp", ".INBOX/cur", ".INBOX/new", ".INBOX/tmp"} {
		if err := mkdirOwned(h.pub.Root, filepath.Join(home, d), uid, gid); err != nil {
			return fault.Retryable(fmt.Errorf("create public folder %s of %s: %w", home, where(ev), err))
		}
	}
	m := marker{UUID: ev.UUID, DN: ev.DN, Address: key}
	if err := writeMarker(home, m); err != nil {
		return fault.Retryable(fmt.Errorf("mark home %s of %s: %w", home, where(ev), err))
	}
	h.homes.set(home, m, true)
	return nil
}

// makePublicRoot makes the public home (not its parents) if it is missing,
// owned like the spool.
func (h *Handler) makePublicRoot() error {
	uid, gid := h.owner()
	return mkdirOwned(filepath.Dir(h.pub.Root), h.pub.Root, uid, gid)
}

// privateMaildir is where Dovecot keeps a private mailbox inside its home
// (mail_location = maildir:~/Maildir, UCS's).
const privateMaildir = "Maildir"

// moveShape reshapes a home just renamed between the private and the public
// spool, judging by what is on disk so it can be repeated after a crash:
// to public, <home>/Maildir becomes <home>/.INBOX and its folders .X move
// up to <home>/.X (the public namespace's "<cn>/X"), and the root maildir
// is made; to private, the reverse, the root's cur/new/tmp removed when
// empty. Each step is one rename(2) within the home.
func (h *Handler) moveShape(home string, toPublic bool) error {
	uid, gid := h.owner()
	inbox, maildir := filepath.Join(home, ".INBOX"), filepath.Join(home, privateMaildir)
	from, to := maildir, inbox
	if !toPublic {
		from, to = inbox, maildir
	}
	if err := renameIfThere(from, to); err != nil {
		return err
	}
	if toPublic {
		if err := liftFolders(to, home); err != nil {
			return err
		}
		for _, d := range []string{"cur", "new", "tmp", ".INBOX/cur", ".INBOX/new", ".INBOX/tmp"} {
			if err := mkdirOwned(home, filepath.Join(home, d), uid, gid); err != nil {
				return err
			}
		}
		return nil
	}
	if err := mkdirOwned(home, maildir, uid, gid); err != nil {
		return err
	}
	if err := liftFolders(home, maildir); err != nil {
		return err
	}
	for _, d := range []string{"cur", "new", "tmp"} {
		// Removed when empty only: mail left there stays for an operator.
		if err := os.Remove(filepath.Join(home, d)); err != nil && !errors.Is(err, fs.ErrNotExist) &&
			!errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
			return err
		}
	}
	return nil
}

// liftFolders moves the maildir++ folders (".X" directories holding a
// cur/) of dir into dest, keeping their names; ".INBOX" stays (it is the
// public INBOX itself) and a name taken in dest is left where it is.
func liftFolders(dir, dest string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() || !strings.HasPrefix(n, ".") || n == ".INBOX" || strings.HasPrefix(n, ".mailsync") {
			continue
		}
		if st, err := os.Stat(filepath.Join(dir, n, "cur")); err != nil || !st.IsDir() {
			continue
		}
		if err := renameIfThere(filepath.Join(dir, n), filepath.Join(dest, n)); err != nil {
			return err
		}
	}
	return nil
}

// renameIfThere renames from to to when from exists and to does not; a
// from already gone is done.
func renameIfThere(from, to string) error {
	err := renameNoReplace(from, to)
	switch {
	case err == nil:
		return errors.Join(atomicfile.SyncDir(filepath.Dir(to)), atomicfile.SyncDir(filepath.Dir(from)))
	case errors.Is(err, fs.ErrNotExist):
		return nil
	}
	return err
}

// setPublicACL sets one entry of a public folder's INBOX ACL through
// doveadm as Config.ACLUser. Right after the namespace appeared, doveadm may still
// answer from a process of the configuration before the reload: a few
// short retries, then a retryable error.
func (h *Handler) setPublicACL(ctx context.Context, key, id string, rights []string) error {
	mbox := publicName(key) + "/INBOX"
	user := h.cfg.ACLUser
	if user == "" {
		return fault.Permanentf("set the ACL of public folder %s: no user to run doveadm as", publicName(key))
	}
	var err error
	for try := 0; try < 20; try++ {
		if err = h.adm.SetACL(ctx, user, mbox, id, rights); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fault.Retryable(fmt.Errorf("set the ACL of public folder %s as %s: %v", publicName(key), user, err))
}

// PublicLayout is the layout of the public folders' homes under root
// (config dovecot.public_home): <root>/<domain>/<name>, as
// mailconf.RenderDovecotPublic serves them.
func PublicLayout(root string) (Layout, error) {
	return NewLayout(filepath.Join(root, "%Ld", "%Ln"))
}

// PublicFolder is the cn of the public folder st stands for, "" when st
// is no such folder (a user, a folder with an address, nil).
func (st *State) PublicFolder() string {
	if st == nil {
		return ""
	}
	return publicName(st.Address)
}

// HomeOf is the home of a mailbox key (State.Address): an address's
// under the spool, a public folder's under the public home.
func (s Settings) HomeOf(key string) (string, error) { return keyPath(s.Layout, s.Public, key) }

// publicPath is the home of public folder cn under the layout l.
func publicPath(l Layout, cn string) (string, error) {
	if l.Root == "" {
		return "", fmt.Errorf("public folder %s: no public home is configured (dovecot.public_home)", cn)
	}
	local, domain, err := address.PublicFolder(event.AttrCN, cn)
	if err != nil {
		return "", err
	}
	return l.Path(local, domain)
}

// keyPath is the home of a mailbox key: an address's under the spool
// layout, a public folder's under the public one.
func keyPath(home, pub Layout, key string) (string, error) {
	if n := publicName(key); n != "" {
		return publicPath(pub, n)
	}
	local, domain, err := ValidateAddress(key)
	if err != nil {
		return "", err
	}
	return home.Path(local, domain)
}
