// Package aliases materialises the Postfix lookup tables that UCS resolves
// live through its ldap: tables (reference §3.2–3.4): the virtual alias map
// (group addresses expanded to their members' primary addresses through
// nested uniqueMember, alternative addresses, forwards, mailing lists), the
// virtual mailbox map and the virtual mailbox domains.
//
// Guarantees:
//   - The maps are derived state: Load rebuilds them from the whole directory
//     index, and after any sequence of Handle calls they equal what a fresh
//     Load of the same directory writes, byte for byte.
//   - Atomic: a table written whole goes to a temp file in the target
//     directory, is postmap'ed, fsynced and renamed into place, so a reader
//     sees the old table or the new one, never a half; a small change to a
//     large table is made in place under postmap's lock (package postmap).
//   - Durable before acknowledged: Handle (or Stage's wait) returns only
//     after a write that includes its change is on disk and fsynced.
//     Changes arriving within Config.Coalesce share one write, and a burst
//     extends the window.
//   - Incremental: a reverse membership index limits a change to the entry,
//     the groups listing it, and their ancestors, recomputed once per write
//     for all the changes it carries (stage.go).
//   - Problems (membership cycles, addresses defined twice, groups over the
//     expansion limit, member DNs not in the index, malformed addresses) are
//     kept as Reports and logged once when they first appear.
//
// Departures from UCS, on purpose:
//   - A membership cycle expands to the union of the cycle's members; UCS's
//     Postfix recurses to its recursion limit and defers the mail (§3.4).
//   - A group without members is left out of the alias map, so RCPT to it
//     is rejected; UCS's table returns the group's own address, which is
//     accepted and then cannot be delivered (§3.4).
//   - A group's mailAlternativeAddress is expanded like its primary address
//     (UCS test 49_mailAlternativeAddress expects it; the stored ldap.groups
//     template does not do it, §0).
//   - An address defined by several entries maps to the union of what each
//     defines, as UCS with mail/postfix/activate_unionmap_in_virtual_alias_maps
//     on (§3.2); a forward without copy-to-self drops the primary address,
//     as with ..._mailForwardCopyToSelf_in_virtual_alias_maps on (§5.2).
package aliases

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"mailsync/address"
	"mailsync/config"
	"mailsync/event"
	"mailsync/fault"
	"mailsync/postmap"
)

// Table file names inside Config.Dir. Postfix's main.cf then names them,
// e.g. virtual_alias_maps = hash:/etc/postfix/mailsync/virtual_alias.
const (
	AliasMap   = "virtual_alias"
	MailboxMap = "virtual_mailbox"
	DomainMap  = "virtual_domains"
)

// Defaults when a caller leaves a setting out: the config's (package
// config, where each says where it comes from).
const (
	DefaultExpansionLimit = config.DefaultExpansionLimit
	DefaultMapType        = config.DefaultMapType
	DefaultCoalesce       = config.DefaultCoalesce
	DefaultPostmap        = config.DefaultPostmap
	DefaultMainCFLocal    = config.DefaultMainCFLocal
)

// mapSuffix is the file postmap makes from a source file, per map type.
var mapSuffix = postmap.Suffixes

// Config configures the handler.
type Config struct {
	// Dir is where the tables are written (required).
	Dir string
	// MapType is hash, lmdb or cdb (default hash).
	MapType string
	// ExpansionLimit is Postfix's virtual_alias_expansion_limit that larger
	// groups are reported against (default 1000; negative disables).
	ExpansionLimit int
	// Coalesce is how long a change waits for others to share its write
	// (default 20ms; negative writes at once).
	Coalesce time.Duration
	// PostmapPath is the postmap binary (default /usr/sbin/postmap).
	PostmapPath string
	// PostfixConfigDir is passed to postmap as -c when set (postmap reads
	// main.cf from there; default: postmap's own, /etc/postfix).
	PostfixConfigDir string
	// HostFQDN decides which shared folders are local (mailbox map) and
	// which remote (§3.3 ldap.sharedfolderlocal/remote). Empty: all local.
	HostFQDN string
	// WriteMainCFLocal has mailsync keep a virtual_alias_expansion_limit
	// line in MainCFLocal, in a block it owns, large enough for the largest
	// group. Postfix reads it after `ucr commit /etc/postfix/main.cf` and
	// `postfix reload` (manual §14.7.8).
	WriteMainCFLocal bool
	// MainCFLocal is the file for WriteMainCFLocal (default
	// /etc/postfix/main.cf.local).
	MainCFLocal string
	// Installed, when set, learns each table installed and how long it
	// took (metrics).
	Installed func(table string, took time.Duration)
}

func (c *Config) setDefaults() error {
	if c.Dir == "" {
		return errors.New("aliases: Dir: required")
	}
	if c.MapType == "" {
		c.MapType = DefaultMapType
	}
	if _, ok := mapSuffix[c.MapType]; !ok {
		return fmt.Errorf("aliases: MapType: %q is not one of hash, lmdb, cdb", c.MapType)
	}
	if c.ExpansionLimit == 0 {
		c.ExpansionLimit = DefaultExpansionLimit
	}
	if c.Coalesce == 0 {
		c.Coalesce = DefaultCoalesce
	}
	if c.PostmapPath == "" {
		c.PostmapPath = DefaultPostmap
	}
	if c.MainCFLocal == "" {
		c.MainCFLocal = DefaultMainCFLocal
	}
	return nil
}

// ReportKind names a sort of problem.
type ReportKind string

const (
	ReportCycle          ReportKind = "cycle"
	ReportCollision      ReportKind = "collision"
	ReportExpansionLimit ReportKind = "expansion-limit"
	ReportMissingMember  ReportKind = "missing-member"
	ReportInvalidAddress ReportKind = "invalid-address"
)

// Report is one problem in the current directory state.
type Report struct {
	Kind    ReportKind
	DNs     []string // the entries involved; a missing member's DN last
	Address string   // for collisions and invalid addresses
	Attr    string   // for invalid addresses: the attribute holding it
	Size    int      // for the expansion limit: the group's recipient count
	Message string
}

func (r Report) key() string {
	return string(r.Kind) + "\x00" + r.Address + "\x00" + r.Attr + "\x00" + strings.Join(r.DNs, "\x00") + "\x00" + fmt.Sprint(r.Size)
}

// MainCFLine is the main.cf.local line that lets Postfix deliver to a group
// of n recipients (manual §14.7.8).
func MainCFLine(n int) string {
	return fmt.Sprintf("virtual_alias_expansion_limit = %d", n)
}

// Handler keeps the tables in step with the directory.
type Handler struct {
	cfg Config
	log zerolog.Logger

	mu      sync.Mutex
	m       *model
	force   bool // write every table, changed or not
	reports map[string]Report
	// synced holds the tables whose live database is known to equal the
	// model's state at the last take: only those may be updated in place.
	synced map[string]bool
	pw     *postmap.Writer
	closed bool
	writes atomic.Int64 // tables installed, for tests and benchmarks
	staged atomic.Int64 // changes staged, for tests and benchmarks
	// incrementalMin is the table size from which a write updates the
	// live database in place (the constant; tests lower it).
	incrementalMin int

	// commits makes the writes changes wait for (group commit); Load
	// writes in its place.
	commits *postmap.Committer
}

// New checks the config and postmap and starts the writer. Temp files left
// by a crash in Dir are removed.
func New(cfg Config, log zerolog.Logger) (*Handler, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath(cfg.PostmapPath); err != nil {
		return nil, fmt.Errorf("aliases: PostmapPath: %w (apt-get install -y postfix)", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("aliases: Dir: %w", err)
	}
	postmap.RemoveStale(cfg.Dir)
	h := &Handler{
		cfg:            cfg,
		log:            log,
		m:              newModel(cfg.HostFQDN, cfg.ExpansionLimit),
		reports:        map[string]Report{},
		synced:         map[string]bool{},
		incrementalMin: postmap.DefaultIncrementalMin,
	}
	h.pw = &postmap.Writer{Dir: cfg.Dir, Type: cfg.MapType, Postmap: cfg.PostmapPath,
		ConfigDir: cfg.PostfixConfigDir, Installed: cfg.Installed}
	h.commits = postmap.NewCommitter(h.pw, cfg.Coalesce, h.collect)
	return h, nil
}

// DerivedFromDirectory marks the maps as derived wholly from the directory:
// the runner skips events a Load already covers.
func (h *Handler) DerivedFromDirectory() {}

// Name is the handler's name in consumer names and logs.
// Name names the handler: in the config, its consumers and its log lines.
const Name = "aliases"

// Name returns the handler's name.
func (h *Handler) Name() string { return Name }

// Load replaces the whole directory state and rewrites every table from it.
// It writes the tables itself, in place of the writer's next write, so that
// postmap starts on the tables that are ready while the rest is still
// computed; changes waiting for a write are superseded by it.
func (h *Handler) Load(ctx context.Context, entries []event.Entry) error {
	err := h.commits.Exclusive(ctx, func(ctx context.Context, w *postmap.Writer) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		err := h.loadLocked(ctx, w, entries)
		h.updateReportsLocked()
		return err
	})
	switch {
	case errors.Is(err, postmap.ErrClosed):
		return errClosed
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return waitErr(err)
	}
	return err
}

var errClosed = errors.New("aliases: handler closed")

// waitErr is the error of a wait for a write that ctx ended.
func waitErr(err error) error {
	return fault.Retryable(fmt.Errorf("aliases: waiting for the map write: %w", err))
}

// Handle applies one change and returns once it is in the tables on disk.
// A malformed event, or an entry with a malformed address (the rest of the
// entry is applied), gives a fault.Permanent error.
func (h *Handler) Handle(ctx context.Context, ev event.Event) error {
	durable, err := h.Stage(ctx, ev)
	if err != nil {
		return err
	}
	return durable(ctx)
}

// Stage applies one change to the directory index and returns at once,
// with a function that waits until a write holding the change is on disk.
// Changes staged meanwhile share that write; an entry's changes apply in
// the order staged. The function returns what Handle would: nil, a
// retryable error when the write failed (calling it again waits for a new
// write of every table), or a fault.Permanent error for a malformed
// address, once the rest of the entry is on disk.
func (h *Handler) Stage(ctx context.Context, ev event.Event) (func(context.Context) error, error) {
	if ev.UUID == "" {
		return nil, fault.Permanentf("aliases: %s event for %q without entryUUID", ev.Op, ev.DN)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errClosed
	}
	var invalid []error
	switch ev.Op {
	case event.OpAdd, event.OpModify:
		if len(ev.New) == 0 {
			return nil, fault.Permanentf("aliases: %s event for %s (%s) without new attributes", ev.Op, ev.DN, ev.UUID)
		}
		e := newEntry(ev.UUID, ev.DN, ev.Kind, ev.New)
		h.m.stage(e)
		// Which addresses are malformed depends on the entry alone.
		invalid = h.m.contribute(e).invalid
	case event.OpDelete:
		h.m.stageDel(ev.UUID)
	default:
		return nil, fault.Permanentf("aliases: unknown op %q for %s (%s)", ev.Op, ev.DN, ev.UUID)
	}
	// Not closed, under h.mu: Join cannot fail.
	b, _ := h.commits.Join()
	h.staged.Add(1)
	return func(ctx context.Context) error {
		if b == nil {
			// A write failed before: wait for a new one.
			var err error
			if b, err = h.commits.Join(); err != nil {
				return errClosed
			}
		}
		if err := b.Wait(ctx); err != nil {
			b = nil
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return waitErr(err)
			}
			return err
		}
		if len(invalid) > 0 {
			return fault.Permanentf("aliases: entry %s (uuid %s): %w; left out of the maps",
				ev.DN, ev.UUID, address.Join(invalid...))
		}
		return nil
	}, nil
}

func (h *Handler) updateReportsLocked() {
	now := map[string]Report{}
	for _, r := range h.m.reports() {
		k := r.key()
		now[k] = r
		if _, seen := h.reports[k]; !seen {
			ev := h.log.Warn().Str("kind", string(r.Kind)).Strs("dns", r.DNs)
			if r.Address != "" {
				ev = ev.Str("address", r.Address)
			}
			if r.Size > 0 {
				ev = ev.Int("size", r.Size).Str("main_cf_local", MainCFLine(r.Size))
			}
			ev.Msg(r.Message)
		}
	}
	h.reports = now
}

// Reports returns the problems the current directory state has.
func (h *Handler) Reports() []Report {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m.refresh()
	return h.m.reports()
}

// Close writes what is pending and stops the writer.
func (h *Handler) Close() error {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.commits.Close()
	return nil
}

// collect is the first half of a write (postmap.Collect): it recomputes
// what the staged changes reach and returns the tables that changed, with
// their deltas when the live database is known to hold the state before
// them (an update in place), and what to do once they are installed.
func (h *Handler) collect() ([]postmap.Table, func(error) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m.refresh()
	h.m.settle()
	h.updateReportsLocked()
	h.pw.IncrementalMin = h.incrementalMin
	force := h.force
	h.force = false
	var tables []postmap.Table
	for _, t := range []struct {
		name string
		r    *rendered
	}{{DomainMap, h.m.domainT}, {MailboxMap, h.m.mailboxT}, {AliasMap, h.m.aliasT}} {
		d := t.r.take()
		if !force && d.Size() == 0 {
			continue
		}
		// Domains and mailboxes before aliases, so a new alias never
		// points at a mailbox Postfix does not know yet.
		tb := postmap.Table{Name: t.name, Source: t.r.source}
		if !force && h.synced[t.name] {
			tb.Delta = &d
		} else {
			tb.Src = t.r.source()
		}
		h.synced[t.name] = false
		tables = append(tables, tb)
	}
	var mainCF int
	if h.cfg.WriteMainCFLocal {
		mainCF = h.m.maxOverLimit()
	}
	return tables, func(err error) error {
		if err == nil {
			h.writes.Add(int64(len(tables)))
			if h.cfg.WriteMainCFLocal {
				err = writeMainCFLocal(h.cfg.MainCFLocal, mainCF)
			}
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if err != nil {
			h.force = true // the next write must not trust what it thinks is on disk
			return fault.Retryable(err)
		}
		for _, t := range tables {
			h.synced[t.Name] = true
		}
		return nil
	}
}
