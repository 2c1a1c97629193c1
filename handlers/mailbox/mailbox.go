// Package mailbox creates, renames and deletes the Dovecot mailboxes of this
// mail host as users come, change address, move between home servers and go
// (UCS's dovecot listener, reference §1; the matrix of manual Table 14.4).
//
// Guarantees:
//   - The decision is UCS's cascade (Decide, reference §1.3), per host, with
//     the one responsibility rule of package identity, on the transition
//     from the state last applied on this host to the entry's newest one.
//   - No mail is lost by a crash: every multi-step operation (a move, a
//     delete) first writes an intent record to the state dir and fsyncs it;
//     each step is idempotent and judged by what is on disk, so Load (at
//     start) or the redelivered event completes it. A move is rename(2)
//     within one filesystem; across filesystems it is copy, fsync, verify
//     (names, owners, sizes, bytes), swap into place, and only then delete.
//   - Nothing outside the spool is touched: every path comes from the
//     mail_home template with a validated address (or, for a shared folder
//     without an address, from the public home and its cn, public.go) and
//     is confined to the template's root (no "..", "/", NUL, control
//     characters, leading dot, or symlink leading out). Those, and a rename target that exists
//     already, are permanent errors naming the DN; nothing is moved or merged.
//   - Dovecot unreachable is a retryable error: the runner retries with
//     backoff and the entry's later events wait, so the work completes when
//     Dovecot is back.
//
// Departures from UCS, on purpose:
//   - A rename never fails silently (§1.6): target exists is a permanent
//     error; the old home missing is a no-op.
//   - Create makes the mailbox at once (doveadm mailbox create of INBOX and
//     the default folders), not as a side effect of a sieve upload (§1.5).
//   - The user is kicked before a move or delete and the auth cache flushed
//     after, also when delete=no keeps the data (§1.5 kicks only on delete).
//   - The separate index dir moves and is deleted with the home (§1.5 leaves
//     it behind).
//   - Each home carries a marker (.mailsync-owner) naming the entry that
//     owns it. A home left at an address another entry now has (kept by
//     delete=no or rename=no) goes to the attic first instead of handing
//     the new user the old user's mail (§1.9 item 1; attic.go); an address
//     two entries hold at once is refused. Homes without a marker (made
//     before mailsync) are reused as UCS does.
//   - Level-triggered: an event is a trigger; the entry is converged to its
//     newest state from the state last applied here (plan.go, converge.go).
package mailbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"mailsync/atomicfile"
	"mailsync/dovecotadm"
	"mailsync/event"
	"mailsync/fault"
	"mailsync/journal"
)

// Doveadm is what the handler asks of Dovecot; *dovecotadm.Client has it.
type Doveadm interface {
	Kick(ctx context.Context, user string) error
	FlushAuthCache(ctx context.Context, users ...string) (int, error)
	CreateMailbox(ctx context.Context, user string, names ...string) error
	// CreateNewMailbox is CreateMailbox for a user without a home yet.
	CreateNewMailbox(ctx context.Context, user string, names ...string) error
	// SetACL sets (no rights: removes) id's entry in user's mailbox's ACL.
	SetACL(ctx context.Context, user, mailbox, id string, rights []string) error
}

// Config is the handler's share of mailsync's config.
type Config struct {
	// Host is this mail host's FQDN.
	Host string
	// MailHome is Dovecot's mail_home template (%Ld/%Ln).
	MailHome string
	// IndexHome is the separate index template; used when SeparateIndex.
	IndexHome     string
	SeparateIndex bool
	// Rename and Delete are mail/dovecot/mailbox/rename and .../delete.
	Rename, Delete bool
	// Folders are created with INBOX (mail/dovecot/folder/spam, .../ham);
	// "" and "none" are skipped.
	Folders []string
	// StateDir holds the intent records (created 0700).
	StateDir string
	// UID and GID own directories the handler creates; -1 means the owner
	// of the spool root.
	UID, GID int
	// MoveOnHomeChange is mail/dovecot/mailbox/move_on_homeserver_change:
	// a user whose home server changes from this host to another has the
	// mail copied there by Mover before the delete policy applies.
	MoveOnHomeChange bool
	Mover            Mover
	// PublicHome is the root of the public folders' maildirs,
	// <PublicHome>/<domain>/<name> (config dovecot.public_home); "" leaves
	// public folders refused. Public installs the public namespaces
	// Dovecot serves them through (nil: not installed, tests of the plan).
	PublicHome string
	Public     PublicNamespaces
	// ACLUser is the user doveadm sets public folders' ACLs as
	// (mailconf.DovecotPublicACLUser).
	ACLUser string
}

// Hooks let tests stop the handler at a step, as a crash would.
type Hooks struct {
	// At is called after each step named in Steps; an error ends the
	// operation there, leaving its intent record behind.
	At func(step string) error
}

// Steps names the points a multi-step operation passes, in order.
var Steps = []string{
	"move:intent", "move:kicked",
	"move:home-renamed", "move:home-copied", "move:home-swapped",
	"move:index-renamed", "move:index-copied", "move:index-swapped",
	"move:marked", "move:flushed", "move:created",
	"delete:intent", "delete:kicked", "delete:home-trashed", "delete:index-trashed", "delete:flushed",
}

// MarkerFile is written into every home the handler creates or moves.
const MarkerFile = ".mailsync-owner"

// trashDir is where a home goes, atomically, before it is removed.
const trashDir = ".mailsync-trash"

// Handler applies user events to this host's mailboxes.
type Handler struct {
	cfg     Config
	adm     Doveadm
	log     zerolog.Logger
	hooks   Hooks
	home    Layout
	index   Layout
	pub     Layout // zero without Config.PublicHome
	public  *publicSet
	folders []string
	intents *journal.Journal // the intent records

	latest  LatestFunc
	locks   sync.Map // uuid -> *sync.Mutex (entryLock)
	unknown sync.Map // uuid -> unknownSince
	applied *appliedStore
	homes   *homeIndex

	// order and slots: staged events (stage.go).
	orderMu sync.Mutex
	order   map[string]*turn // uuid -> its last staged event
	slots   chan struct{}

	fsMu sync.Mutex // serialises checks and moves of homes across entries
	dirs sync.Map   // directory path -> *atomicfile.Dir (syncDirs)
	// rename is renameNoReplace; tests replace it to force the
	// cross-filesystem path.
	rename func(from, to string) error
}

// New returns a handler. The state dir is created if missing.
func New(cfg Config, adm Doveadm, log zerolog.Logger, hooks Hooks) (*Handler, error) {
	h := &Handler{cfg: cfg, adm: adm, log: log.With().Str("handler", Name).Logger(), hooks: hooks, rename: renameNoReplace,
		order: map[string]*turn{}, slots: make(chan struct{}, StageParallel)}
	var err error
	if h.home, err = NewLayout(cfg.MailHome); err != nil {
		return nil, fmt.Errorf("mail home: %w", err)
	}
	if cfg.SeparateIndex {
		if h.index, err = NewLayout(cfg.IndexHome); err != nil {
			return nil, fmt.Errorf("index home: %w", err)
		}
	}
	if cfg.Host == "" {
		return nil, errors.New("mailbox handler: host FQDN is empty")
	}
	h.folders = []string{"INBOX"}
	for _, f := range cfg.Folders {
		if f = strings.TrimSpace(f); f != "" && !strings.EqualFold(f, "none") && !strings.EqualFold(f, "INBOX") {
			h.folders = append(h.folders, f)
		}
	}
	if cfg.MoveOnHomeChange && cfg.Mover == nil {
		return nil, errors.New("mailbox handler: move_on_homeserver_change needs a Mover")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("mailbox handler: state dir is empty")
	}
	if h.intents, err = journal.Open(filepath.Join(cfg.StateDir, "mailbox-intents"), "intent record"); err != nil {
		return nil, fmt.Errorf("mailbox handler: %w", err)
	}
	if h.applied, err = newAppliedStore(filepath.Join(cfg.StateDir, "mailbox-applied")); err != nil {
		return nil, err
	}
	h.homes = newHomeIndex()
	if err := h.homes.scan(h.home); err != nil {
		return nil, fmt.Errorf("index the homes of %s: %w", h.home.Root, err)
	}
	if cfg.PublicHome != "" {
		if h.pub, err = PublicLayout(cfg.PublicHome); err != nil {
			return nil, fmt.Errorf("public home: %w", err)
		}
		for _, l := range []Layout{h.home, h.index} {
			if l.Root != "" && (within(l.Root, h.pub.Root) || within(h.pub.Root, l.Root)) {
				return nil, fmt.Errorf("public home %s and spool %s overlap", h.pub.Root, l.Root)
			}
		}
		// The public home is made with the first public folder.
		if err := h.homes.scan(h.pub); err != nil {
			return nil, fmt.Errorf("index the public folders of %s: %w", h.pub.Root, err)
		}
	}
	if h.public, err = loadPublicSet(filepath.Join(cfg.StateDir, "mailbox-public.json")); err != nil {
		return nil, err
	}
	return h, nil
}

// Name is the handler's name in consumer names and logs.
// Name names the handler: in the config, its consumers and its log lines.
const Name = "mailbox"

// Name returns the handler's name.
func (h *Handler) Name() string { return Name }

// Load completes every operation a crash interrupted. An operation that
// cannot finish yet (Dovecot down) stays recorded; the event that started
// it was not acked, so its redelivery completes it through Handle.
func (h *Handler) Load(ctx context.Context, _ []event.Entry) error {
	uuids, err := h.intents.List()
	if err != nil {
		return err
	}
	for _, uuid := range uuids {
		if err := h.resume(ctx, uuid); err != nil {
			h.log.Warn().Err(err).Str("uuid", uuid).Msg("interrupted mailbox operation not completed yet")
		}
	}
	// Dovecot serves the public folders recorded (a crash between the
	// record and the install, or a configuration put back by hand); a
	// failure waits for the next change of the set.
	if err := h.installPublic(ctx, h.public.names()); err != nil {
		h.log.Warn().Err(err).Msg("public folders not served yet")
	}
	return nil
}

// validUUID accepts what an entryUUID looks like, so it can name a file.
func validUUID(u string) bool {
	if u == "" || len(u) > 128 {
		return false
	}
	for _, r := range u {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-') {
			return false
		}
	}
	return true
}

// where names the entry in errors.
func where(ev event.Event) string { return fmt.Sprintf("entry %s (uuid %s)", ev.DN, ev.UUID) }

// paths validates addr and returns its home and (with a separate index)
// index dir. Errors are permanent and name the entry. A public folder's
// key gives its home under the public home and no index dir (its
// namespace keeps the indexes in the maildir).
func (h *Handler) paths(ev event.Event, addr string) (home, index string, err error) {
	if n := publicName(addr); n != "" {
		if home, err = publicPath(h.pub, n); err != nil {
			return "", "", fault.Permanentf("public folder of %s: %w", where(ev), err)
		}
		return home, "", nil
	}
	local, domain, err := ValidateAddress(addr)
	if err != nil {
		return "", "", fault.Permanentf("mailbox of %s: %w", where(ev), err)
	}
	if home, err = h.home.Path(local, domain); err != nil {
		return "", "", fault.Permanentf("mailbox of %s, address %q: %w", where(ev), addr, err)
	}
	if h.cfg.SeparateIndex {
		if index, err = h.index.Path(local, domain); err != nil {
			return "", "", fault.Permanentf("mailbox index of %s, address %q: %w", where(ev), addr, err)
		}
	}
	return home, index, nil
}

// layoutOf is the layout whose root holds p: the spool, the index root or
// the public home.
func (h *Handler) layoutOf(p string) Layout {
	for _, l := range []Layout{h.index, h.pub} {
		if l.Root != "" && within(l.Root, p) {
			return l
		}
	}
	return h.home
}

// confine checks the paths right before they are used.
func (h *Handler) confine(ev event.Event, home, index string) error {
	if err := h.layoutOf(home).Confine(home); err != nil {
		if fault.IsRetryable(err) {
			return err
		}
		return fault.Permanentf("mailbox of %s: %w", where(ev), err)
	}
	if index != "" {
		if err := h.index.Confine(index); err != nil {
			if fault.IsRetryable(err) {
				return err
			}
			return fault.Permanentf("mailbox index of %s: %w", where(ev), err)
		}
	}
	return nil
}

func (h *Handler) at(step string) error {
	if h.hooks.At == nil {
		return nil
	}
	return h.hooks.At(step)
}

// owner is the uid:gid for directories the handler makes.
func (h *Handler) owner() (int, int) {
	uid, gid := h.cfg.UID, h.cfg.GID
	if uid >= 0 && gid >= 0 {
		return uid, gid
	}
	if st, err := os.Stat(h.home.Root); err == nil {
		s := st.Sys().(*syscall.Stat_t)
		if uid < 0 {
			uid = int(s.Uid)
		}
		if gid < 0 {
			gid = int(s.Gid)
		}
	}
	return uid, gid
}

// marker is the content of MarkerFile.
type marker struct {
	UUID    string `json:"uuid"`
	DN      string `json:"dn"`
	Address string `json:"address"`
}

func readMarker(home string) (marker, bool) {
	var m marker
	data, err := os.ReadFile(filepath.Join(home, MarkerFile))
	if err != nil || json.Unmarshal(data, &m) != nil || m.UUID == "" {
		return marker{}, false
	}
	return m, true
}

func writeMarker(home string, m marker) error {
	if old, ok := readMarker(home); ok && old == m {
		return nil
	}
	data, _ := json.Marshal(m)
	return atomicfile.Write(filepath.Join(home, MarkerFile), data, 0o600)
}

// cacheNames are the auth cache names of an entry: its addresses and, for
// a user whose DN is named by uid, the uid, which logs in too (the userdb
// matches mailPrimaryAddress or uid) and whose cached entry names the
// address it resolved to.
func cacheNames(dn string, addrs ...string) []string {
	var out []string
	for _, a := range addrs {
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	rdn, _, _ := strings.Cut(dn, ",")
	if k, v, ok := strings.Cut(rdn, "="); ok && strings.EqualFold(strings.TrimSpace(k), "uid") && v != "" && !strings.ContainsAny(v, `\+`) {
		out = append(out, strings.TrimSpace(v))
	}
	return out
}

// createKind makes the mailbox of addr with folders (nil: the default
// ones), or a public folder's maildir for a public key.
func (h *Handler) createKind(ctx context.Context, ev event.Event, addr string, folders []string) error {
	if publicName(addr) != "" {
		home, _, err := h.paths(ev, addr)
		if err != nil {
			return err
		}
		if err := h.confine(ev, home, ""); err != nil {
			return err
		}
		return h.createPublic(ev, addr, home)
	}
	if folders == nil {
		folders = h.folders
	}
	return h.createWith(ctx, ev, addr, folders)
}

// createWith makes the mailbox of addr with the folders given.
func (h *Handler) createWith(ctx context.Context, ev event.Event, addr string, folders []string) error {
	home, index, err := h.paths(ev, addr)
	if err != nil {
		return err
	}
	if err := h.confine(ev, home, index); err != nil {
		return err
	}
	if m, ok := readMarker(home); ok && m.UUID != ev.UUID {
		return fault.Permanentf("create mailbox %s for %s: home %s belongs to entry %s (uuid %s), "+
			"which had the address %q; not reused", addr, where(ev), home, m.DN, m.UUID, m.Address)
	}
	// Without a home there are no mailboxes to list first.
	createMailbox := h.adm.CreateMailbox
	if ok, _ := exists(home); !ok {
		createMailbox = h.adm.CreateNewMailbox
	}
	err = createMailbox(ctx, addr, folders...)
	if errors.Is(err, dovecotadm.ErrUnknownUser) {
		// A negative auth cache entry from before the directory change:
		// the user's own entries go, not everyone's.
		if _, ferr := h.adm.FlushAuthCache(ctx, cacheNames(ev.DN, addr)...); ferr != nil {
			return ferr
		}
		err = createMailbox(ctx, addr, folders...)
	}
	if err != nil {
		return fmt.Errorf("create mailbox of %s: %w", where(ev), err)
	}
	if err := h.confine(ev, home, index); err != nil {
		return err
	}
	if err := writeMarker(home, marker{UUID: ev.UUID, DN: ev.DN, Address: addr}); err != nil {
		return fault.Retryable(fmt.Errorf("mark home %s of %s: %w", home, where(ev), err))
	}
	return nil
}

// intent is the record of a multi-step operation, written before its first
// step and removed after its last.
type intent struct {
	V    int    `json:"v"`
	Op   string `json:"op"` // "move" or "delete"
	UUID string `json:"uuid"`
	DN   string `json:"dn"`
	Old  string `json:"old"`           // address whose home moves or goes
	New  string `json:"new,omitempty"` // move: the new address
	// Folders are made in the moved mailbox (none for a public folder);
	// unset: the handler's default folders (records before the field).
	Folders []string  `json:"folders,omitempty"`
	Ops     []pathOp  `json:"paths"`
	At      time.Time `json:"at"`
}

// pathOp moves (or, for a delete, trashes) one directory.
type pathOp struct {
	What string `json:"what"` // "home" or "index"
	Root string `json:"root"` // spool (or index) root the paths are confined to
	From string `json:"from"`
	To   string `json:"to"`            // new home, or the trash path for a delete
	Tmp  string `json:"tmp,omitempty"` // staging copy across filesystems
	// Verified: the staging copy was verified; from then on the copy is
	// the truth and the original may be deleted.
	Verified bool `json:"verified,omitempty"`
}

func (h *Handler) saveIntent(in *intent) error { return h.intents.Save(in.UUID, in) }

func (h *Handler) dropIntent(uuid string) error { return h.intents.Drop(uuid) }

// resume completes the recorded operation of an entry, if there is one. A
// permanent failure drops the record (the failing step moved nothing).
func (h *Handler) resume(ctx context.Context, uuid string) error {
	if !validUUID(uuid) {
		return nil
	}
	var in intent
	if ok, err := h.intents.Load(uuid, &in); !ok || err != nil {
		return err
	}
	h.log.Info().Str("uuid", in.UUID).Str("dn", in.DN).Str("op", in.Op).Str("old", in.Old).Str("new", in.New).
		Msg("completing an interrupted mailbox operation")
	err := h.run(ctx, &in)
	if fault.IsPermanent(err) {
		if derr := h.dropIntent(uuid); derr != nil {
			return derr
		}
	}
	return err
}

// run performs (or completes) an operation. Every step is idempotent.
func (h *Handler) run(ctx context.Context, in *intent) error {
	op := in.Op
	defer func() {
		// Keep the home index current whatever the steps got to.
		for _, p := range in.Ops {
			if p.What == "home" {
				h.homes.update(p.From)
				if op == "move" { // a delete's To is in the trash
					h.homes.update(p.To)
				}
			}
		}
	}()
	// A public folder is no Dovecot user: no session of its own to end.
	if publicName(in.Old) == "" {
		if err := h.adm.Kick(ctx, in.Old); err != nil {
			return fmt.Errorf("%s mailbox of entry %s: %w", op, in.DN, err)
		}
	}
	if err := h.at(op + ":kicked"); err != nil {
		return err
	}
	for i := range in.Ops {
		var err error
		if op == "move" {
			err = h.movePath(in, &in.Ops[i])
		} else {
			err = h.trashPath(in, &in.Ops[i])
		}
		if err != nil {
			return err
		}
	}
	if op == "move" {
		home := in.Ops[0].To
		if toPublic := publicName(in.New) != ""; toPublic != (publicName(in.Old) != "") {
			if ok, _ := exists(home); ok {
				if err := h.moveShape(home, toPublic); err != nil {
					return fault.Retryable(fmt.Errorf("move mailbox of entry %s: reshape %s: %w", in.DN, home, err))
				}
			}
		}
		if ok, _ := exists(home); ok {
			if err := writeMarker(home, marker{UUID: in.UUID, DN: in.DN, Address: in.New}); err != nil {
				return fault.Retryable(fmt.Errorf("mark home %s of entry %s: %w", home, in.DN, err))
			}
		}
		if err := h.at("move:marked"); err != nil {
			return err
		}
	}
	// The old address must stop logging in from the cache; a new address
	// must not stay unknown from a negative entry. UCS flushes the whole
	// cache (§1.5); the entry's own names are enough, and a burst of
	// renames does not empty everyone's cache once per rename.
	if _, err := h.adm.FlushAuthCache(ctx, cacheNames(in.DN, in.Old, in.New)...); err != nil {
		return fmt.Errorf("%s mailbox of entry %s: %w", op, in.DN, err)
	}
	if err := h.at(op + ":flushed"); err != nil {
		return err
	}
	if op == "move" && publicName(in.New) == "" {
		folders := in.Folders
		if len(folders) == 0 {
			folders = h.folders
		}
		if err := h.adm.CreateMailbox(ctx, in.New, folders...); err != nil {
			return fmt.Errorf("move mailbox of entry %s: %w", in.DN, err)
		}
		if err := h.at("move:created"); err != nil {
			return err
		}
	}
	return h.dropIntent(in.UUID)
}

// syncDirs makes the renames in dirs durable; renames of other entries in
// the same directory at the same time share the fsync (atomicfile.Dir).
func (h *Handler) syncDirs(dirs ...string) error {
	var errs []error
	for i, d := range dirs {
		if slices.Contains(dirs[:i], d) {
			continue
		}
		v, _ := h.dirs.LoadOrStore(d, atomicfile.NewDir(d))
		errs = append(errs, v.(*atomicfile.Dir).Sync())
	}
	return errors.Join(errs...)
}

// movePath brings one directory from From to To, judging by what is on
// disk, so a repeated call after a crash at any point finishes the job.
func (h *Handler) movePath(in *intent, p *pathOp) error {
	h.fsMu.Lock()
	locked := true
	unlock := func() {
		if locked {
			locked = false
			h.fsMu.Unlock()
		}
	}
	defer unlock()
	l := h.layoutOf(p.To)
	for _, q := range []string{p.From, p.To} {
		if err := h.layoutOf(q).Confine(q); err != nil {
			return fault.Permanentf("move %s of entry %s: %w", p.What, in.DN, err)
		}
	}
	fromOK, err1 := exists(p.From)
	toOK, err2 := exists(p.To)
	if err := errors.Join(err1, err2); err != nil {
		return fault.Retryable(fmt.Errorf("move %s of entry %s: %w", p.What, in.DN, err))
	}
	fail := func(err error) error {
		return fault.Retryable(fmt.Errorf("move %s %s -> %s of entry %s: %w", p.What, p.From, p.To, in.DN, err))
	}
	if !fromOK {
		// Done, or nothing was there to move (§1.9 item 4).
		if p.Tmp != "" {
			if err := os.RemoveAll(p.Tmp); err != nil {
				return fail(err)
			}
		}
		return nil
	}
	if toOK {
		switch {
		case p.Verified:
			// The verified copy was swapped in; finish deleting the original.
			if err := os.RemoveAll(p.From); err != nil {
				return fail(err)
			}
			return atomicfile.SyncDir(filepath.Dir(p.From))
		case p.What == "index":
			// A stale index of an earlier owner of the address: indexes
			// are caches Dovecot rebuilds; the moving one is the truth.
			h.log.Warn().Str("dn", in.DN).Str("path", p.To).Msg("removing a stale index dir in the way of a move")
			if err := os.RemoveAll(p.To); err != nil {
				return fail(err)
			}
		case p.What == "home" && h.bornDuring(in, p.To):
			// Dovecot made it during this rename (a login or delivery at
			// the new address): set it aside, give its messages to the
			// moving home, and rename at once (absorb.go).
			if err := h.setAsideLocked(in.UUID, p.To); err != nil {
				return fail(err)
			}
			if err := h.drainRaceHomesLocked(in.UUID, in.DN, p.From); err != nil {
				return err
			}
		default:
			return h.conflict(in, p)
		}
	}
	uid, gid := h.owner()
	if err := mkdirOwned(l.Root, filepath.Dir(p.To), uid, gid); err != nil {
		return fail(err)
	}
	if p.Verified {
		if ok, _ := exists(p.Tmp); ok {
			return h.swapCopy(in, p, fail)
		}
		p.Verified = false
	}
	err := h.rename(p.From, p.To)
	switch {
	case err == nil:
		// The rename is made; making it durable needs no other entry to
		// wait (the next step of this one waits for it).
		unlock()
		if err := h.syncDirs(filepath.Dir(p.To), filepath.Dir(p.From)); err != nil {
			return fail(err)
		}
		return h.at("move:" + p.What + "-renamed")
	case errors.Is(err, syscall.EEXIST), errors.Is(err, syscall.ENOTEMPTY):
		return h.conflict(in, p)
	case !errors.Is(err, syscall.EXDEV):
		return fail(err)
	}
	// Across filesystems: copy, verify, swap in; never delete before verify.
	if p.Tmp == "" {
		p.Tmp = filepath.Join(filepath.Dir(p.To), ".mailsync-copy-"+filepath.Base(p.To))
	}
	if err := os.RemoveAll(p.Tmp); err != nil {
		return fail(err)
	}
	if err := copyTree(p.From, p.Tmp); err != nil {
		return fail(fmt.Errorf("copy: %w", err))
	}
	if err := syncTree(p.Tmp); err != nil {
		return fail(err)
	}
	if err := verifyTree(p.From, p.Tmp); err != nil {
		return fail(err)
	}
	p.Verified = true
	if err := h.saveIntent(in); err != nil {
		return err
	}
	if err := h.at("move:" + p.What + "-copied"); err != nil {
		return err
	}
	return h.swapCopy(in, p, fail)
}

// swapCopy puts a verified copy in place, then deletes the original.
func (h *Handler) swapCopy(in *intent, p *pathOp, fail func(error) error) error {
	if err := renameNoReplace(p.Tmp, p.To); err != nil {
		if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return h.conflict(in, p)
		}
		return fail(err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(p.To)); err != nil {
		return fail(err)
	}
	if err := h.at("move:" + p.What + "-swapped"); err != nil {
		return err
	}
	if err := os.RemoveAll(p.From); err != nil {
		return fail(err)
	}
	return atomicfile.SyncDir(filepath.Dir(p.From))
}

// conflict is a move target that exists: nothing is moved or merged.
func (h *Handler) conflict(in *intent, p *pathOp) error {
	if p.What == "home" && h.bornDuring(in, p.To) {
		// Made by Dovecot a moment ago (a login or delivery at the new
		// address): the next attempt sets it aside and renames.
		return fault.Retryable(fmt.Errorf("rename mailbox of entry %s (uuid %s): home %s appeared during the rename; taking it over",
			in.DN, in.UUID, p.To))
	}
	other := "an entry mailsync does not know (the home has no owner marker)"
	if m, ok := readMarker(p.To); ok {
		other = fmt.Sprintf("entry %s (uuid %s, address %q)", m.DN, m.UUID, m.Address)
	}
	return fault.Permanentf("rename mailbox of entry %s (uuid %s) from %q to %q: target %s %s exists already, "+
		"belonging to %s; nothing moved, the mail stays at %s", in.DN, in.UUID, in.Old, in.New, p.What, p.To, other, p.From)
}

// trashPath removes one directory: an atomic rename into the trash, so
// Dovecot never sees half a home, then the removal.
func (h *Handler) trashPath(in *intent, p *pathOp) error {
	h.fsMu.Lock()
	defer h.fsMu.Unlock()
	if err := h.layoutOf(p.From).Confine(p.From); err != nil {
		return fault.Permanentf("delete %s of entry %s: %w", p.What, in.DN, err)
	}
	fail := func(err error) error {
		return fault.Retryable(fmt.Errorf("delete %s %s of entry %s: %w", p.What, p.From, in.DN, err))
	}
	if ok, err := exists(p.From); err != nil {
		return fail(err)
	} else if ok {
		if err := os.MkdirAll(filepath.Dir(p.To), 0o700); err != nil {
			return fail(err)
		}
		err := renameNoReplace(p.From, p.To)
		if errors.Is(err, syscall.EXDEV) {
			err = os.RemoveAll(p.From) // the trash is on another filesystem
		}
		if err != nil {
			return fail(err)
		}
		if err := atomicfile.SyncDir(filepath.Dir(p.From)); err != nil {
			return fail(err)
		}
		if err := h.at("delete:" + p.What + "-trashed"); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(p.To); err != nil {
		return fail(err)
	}
	return nil
}

// move renames addr old's mailbox to new (rename=yes), making folders in
// it (nil: the default ones).
func (h *Handler) move(ctx context.Context, ev event.Event, oldAddr, newAddr string, folders []string) error {
	oldHome, oldIndex, err := h.paths(ev, oldAddr)
	if err != nil {
		return err
	}
	newHome, newIndex, err := h.paths(ev, newAddr)
	if err != nil {
		return err
	}
	for _, pair := range [][2]string{{oldHome, oldIndex}, {newHome, newIndex}} {
		if err := h.confine(ev, pair[0], pair[1]); err != nil {
			return err
		}
	}
	if publicName(newAddr) != "" {
		if err := h.makePublicRoot(); err != nil {
			return fault.Retryable(fmt.Errorf("rename mailbox of %s: %w", where(ev), err))
		}
	}
	in := &intent{V: 1, Op: "move", UUID: ev.UUID, DN: ev.DN, Old: oldAddr, New: newAddr, At: time.Now().UTC(), Folders: folders,
		Ops: []pathOp{{What: "home", Root: h.layoutOf(newHome).Root, From: oldHome, To: newHome}}}
	if oldIndex != "" && newIndex != "" {
		in.Ops = append(in.Ops, pathOp{What: "index", Root: h.index.Root, From: oldIndex, To: newIndex})
	} else if oldIndex != "" {
		// Into the public namespace, which keeps its indexes in the
		// maildir: the separate index is a cache, dropped.
		if err := h.index.Confine(oldIndex); err == nil {
			_ = os.RemoveAll(oldIndex)
		}
	}
	h.fsMu.Lock()
	oldOK, err1 := exists(oldHome)
	newOK, err2 := exists(newHome)
	h.fsMu.Unlock()
	if err := errors.Join(err1, err2); err != nil {
		return fault.Retryable(fmt.Errorf("rename mailbox of %s: %w", where(ev), err))
	}
	if !oldOK {
		// Nothing to move (the user never got mail): the new address just
		// gets its mailbox. The old index, if any, is a cache: dropped.
		h.log.Info().Str("dn", ev.DN).Str("uuid", ev.UUID).Str("path", oldHome).Msg("old home missing; nothing to move")
		if oldIndex != "" {
			if err := h.index.Confine(oldIndex); err == nil {
				_ = os.RemoveAll(oldIndex)
			}
		}
		return h.createKind(ctx, ev, newAddr, folders)
	}
	if oldOK {
		// Race homes set aside before a crash give their messages back first.
		if err := h.drainRaceHomes(ev, oldHome); err != nil {
			return err
		}
	}
	if newOK && raceHome(newHome, ev) {
		if err := h.absorbRaceHome(ctx, ev, newAddr, oldHome, newHome); err != nil {
			return err
		}
		newOK = false
	}
	if newOK {
		h.fsMu.Lock()
		defer h.fsMu.Unlock()
		return h.conflict(in, &in.Ops[0])
	}
	if m, ok := readMarker(oldHome); ok && m.UUID != ev.UUID {
		return fault.Permanentf("rename mailbox of %s from %q to %q: home %s belongs to entry %s (uuid %s); nothing moved",
			where(ev), oldAddr, newAddr, oldHome, m.DN, m.UUID)
	}
	return h.begin(ctx, in)
}

// delete applies the delete policy to addr's mailbox: kept (delete=no,
// see keep) or trashed (delete=yes).
func (h *Handler) delete(ctx context.Context, ev event.Event, addr string) error {
	if !h.cfg.Delete {
		return h.keep(ctx, ev, addr)
	}
	return h.trash(ctx, ev, addr)
}

// trash deletes addr's home (and index): an intent record, then the steps.
// A home another entry owns is left alone: the address is that entry's now.
func (h *Handler) trash(ctx context.Context, ev event.Event, addr string) error {
	home, index, err := h.paths(ev, addr)
	if err != nil {
		return err
	}
	if err := h.confine(ev, home, index); err != nil {
		return err
	}
	if m, ok := readMarker(home); ok && m.UUID != ev.UUID {
		h.log.Info().Str("dn", ev.DN).Str("uuid", ev.UUID).Str("path", home).Str("owner_dn", m.DN).
			Msg("home of a given-up address belongs to another entry now; not deleted")
		return nil
	}
	stamp := fmt.Sprintf("%s-%d", ev.UUID, time.Now().UnixNano())
	root := h.layoutOf(home).Root
	in := &intent{V: 1, Op: "delete", UUID: ev.UUID, DN: ev.DN, Old: addr, At: time.Now().UTC(),
		Ops: []pathOp{{What: "home", Root: root, From: home, To: filepath.Join(root, trashDir, stamp)}}}
	if index != "" {
		in.Ops = append(in.Ops, pathOp{What: "index", Root: h.index.Root, From: index, To: filepath.Join(h.index.Root, trashDir, stamp)})
	}
	return h.begin(ctx, in)
}

// begin records the intent of a multi-step operation, then runs it; an
// operation that cannot succeed drops its intent.
func (h *Handler) begin(ctx context.Context, in *intent) error {
	if err := h.saveIntent(in); err != nil {
		return err
	}
	if err := h.at(in.Op + ":intent"); err != nil {
		return err
	}
	err := h.run(ctx, in)
	if fault.IsPermanent(err) {
		if derr := h.dropIntent(in.UUID); derr != nil {
			return derr
		}
	}
	return err
}

// Pending lists the entryUUIDs with an unfinished operation, sorted.
func (h *Handler) Pending() []string {
	out, _ := h.intents.List()
	return out
}
