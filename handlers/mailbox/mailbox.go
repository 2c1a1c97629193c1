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
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"mailsync/event"
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
	locksMu sync.Mutex
	locks   map[string]*entryLock // entries held or waited for (lockEntry)
	unknown sync.Map              // uuid -> unknownSince
	applied *appliedStore
	homes   *homeIndex

	// order and slots: staged events (stage.go).
	orderMu sync.Mutex
	order   map[string]*turn // uuid -> its last staged event
	slots   chan struct{}
	queued  chan struct{} // staged events not converged once yet (StageQueue)

	fsMu sync.Mutex // serialises checks and moves of homes across entries
	dirs sync.Map   // directory path -> *atomicfile.Dir (syncDirs)
	// rename is renameNoReplace; tests replace it to force the
	// cross-filesystem path.
	rename func(from, to string) error
}

// New returns a handler. The state dir is created if missing.
func New(cfg Config, adm Doveadm, log zerolog.Logger, hooks Hooks) (*Handler, error) {
	h := &Handler{cfg: cfg, adm: adm, log: log.With().Str("handler", Name).Logger(), hooks: hooks, rename: renameNoReplace,
		locks: map[string]*entryLock{}, order: map[string]*turn{}, slots: make(chan struct{}, StageParallel), queued: make(chan struct{}, StageQueue)}
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

func (h *Handler) at(step string) error {
	if h.hooks.At == nil {
		return nil
	}
	return h.hooks.At(step)
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

// Pending lists the entryUUIDs with an unfinished operation, sorted.
func (h *Handler) Pending() []string {
	out, _ := h.intents.List()
	return out
}
