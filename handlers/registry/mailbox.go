package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/sync/errgroup"

	"mailsync/config"
	"mailsync/dovecotadm"
	"mailsync/event"
	"mailsync/handlers/mailbox"
	"mailsync/identity"
	"mailsync/mailconf"
	"mailsync/migrate"
	"mailsync/runner"
)

// The mailbox handler's state is the homes on this host's spool: check,
// plan and resync all ask its own plan (mailbox.PlanFor) what it would do,
// from the homes on disk now.

func validateMailbox(c *config.Config) []error {
	if c.Dovecot.DoveadmURL == "" {
		return []error{fmt.Errorf("dovecot.doveadm_url: required by the %s handler", mailbox.Name)}
	}
	return nil
}

func buildMailbox(_ context.Context, c *config.Config, d Deps) (runner.Handler, error) {
	uid, gid, err := parseOwner(c.Dovecot.Owner)
	if err != nil {
		return nil, &SettingError{"dovecot.owner", err}
	}
	hc, err := d.Doveadm()
	if err != nil {
		return nil, err
	}
	adm, err := dovecotadm.New(c.Dovecot.DoveadmURL, c.Dovecot.APIKey, dovecotadm.WithHTTPClient(hc))
	if err != nil {
		return nil, &SettingError{"dovecot.doveadm_url", err}
	}
	// The public folders' namespaces go into Dovecot's configuration only
	// where mailsync renders it (configure: [dovecot]).
	var public mailbox.PublicNamespaces
	if slices.Contains(c.Configure, "dovecot") {
		public = mailconf.HostFor(c)
	}
	var mover mailbox.Mover
	if c.Policy.MoveOnHomeChange {
		m, err := newMover(c, adm, hc, d)
		if err != nil {
			return nil, err
		}
		mover = m
	}
	h, err := mailbox.New(mailbox.Config{
		Host:          c.Host,
		MailHome:      c.Dovecot.MailHome,
		IndexHome:     c.Dovecot.IndexHome,
		SeparateIndex: c.Policy.SeparateIndex,
		Rename:        c.Policy.Rename,
		Delete:        c.Policy.Delete,
		Folders:       []string{c.Policy.FolderSpam, c.Policy.FolderHam},
		StateDir:      c.StateDir,
		UID:           uid,
		GID:           gid,

		MoveOnHomeChange: mover != nil,
		Mover:            mover,

		PublicHome: c.Dovecot.PublicHome,
		Public:     public,
		ACLUser:    mailconf.DovecotPublicACLUser,
	}, adm, d.Log, d.MailboxHooks)
	if err != nil {
		return nil, &SettingError{"mailbox handler (dovecot.mail_home, dovecot.index_home, state_dir)", err}
	}
	return h, nil
}

// newMover builds the Mover of move_on_homeserver_change from the peers.
func newMover(c *config.Config, adm *dovecotadm.Client, hc *http.Client, d Deps) (*migrate.Mover, error) {
	peers := map[string]migrate.Peer{}
	for host, p := range c.Peers {
		pc, err := dovecotadm.New(p.DoveadmURL, p.APIKey, dovecotadm.WithHTTPClient(hc))
		if err != nil {
			return nil, &SettingError{"peers." + host + ".doveadm_url", err}
		}
		peers[host] = migrate.Peer{Doveadm: pc, Dsync: "tcp:" + p.DoveadmTCP}
	}
	m, err := migrate.New(migrate.Config{Host: c.Host, StateDir: c.StateDir,
		Userdb: c.Dovecot.MovingUserdb, Local: adm, Peers: peers}, d.Log, migrate.Hooks{})
	if err != nil {
		return nil, &SettingError{"dovecot.moving_userdb, state_dir", err}
	}
	return m, nil
}

// parseOwner reads dovecot.owner, "uid:gid" as numbers; "" means the
// spool root's owner.
func parseOwner(s string) (int, int, error) {
	if s == "" {
		return -1, -1, nil
	}
	u, g, ok := strings.Cut(s, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil || uid < 0 || gid < 0 {
		return 0, 0, fmt.Errorf("want uid:gid as numbers, got %q", s)
	}
	return uid, gid, nil
}

// MailboxSettings are the mailbox handler's plan settings from the config.
func MailboxSettings(c *config.Config) (mailbox.Settings, error) {
	l, err := mailbox.NewLayout(c.Dovecot.MailHome)
	if err != nil {
		return mailbox.Settings{}, &SettingError{"dovecot.mail_home", err}
	}
	pub, err := mailbox.PublicLayout(c.Dovecot.PublicHome)
	if err != nil {
		return mailbox.Settings{}, &SettingError{"dovecot.public_home", err}
	}
	return mailbox.Settings{Host: c.Host, Rename: c.Policy.Rename, Delete: c.Policy.Delete,
		MoveOnHomeChange: c.Policy.MoveOnHomeChange, Layout: l, Public: pub}, nil
}

// entryPlan is the mailbox handler's plan for one entry (or an owner
// marker whose entry is gone: cur nil) if this host had applied the
// directory as it is now.
type entryPlan struct {
	uuid string
	cur  *mailbox.State
	plan mailbox.Plan
}

// responsibleHome is the home of cur's address when this host keeps it.
func responsibleHome(s mailbox.Settings, cur *mailbox.State) (string, bool) {
	if cur == nil || cur.Address == "" || !identity.Responsible(cur.HomeServer, s.Host) {
		return "", false
	}
	p, err := s.HomeOf(cur.Address)
	if err != nil {
		return "", true
	}
	return p, true
}

// mailboxPlans plans every entry the mailbox handler follows and every
// owner marker on the spool.
func mailboxPlans(c *config.Config, entries []event.Entry) (mailbox.Settings, *mailbox.Spool, []entryPlan, error) {
	s, err := MailboxSettings(c)
	if err != nil {
		return s, nil, nil, err
	}
	spool, err := mailbox.ReadSpool(s.Layout, s.Public)
	if err != nil {
		return s, nil, nil, err
	}
	users := map[string]*mailbox.State{}
	var order []string
	for _, e := range entries {
		if st, ok := mailbox.StateOf(e); ok {
			users[e.UUID] = &st
			order = append(order, e.UUID)
		}
	}
	for _, u := range spool.Owners() {
		if _, ok := users[u]; !ok {
			order = append(order, u)
		}
	}
	other := func(u string) (*mailbox.State, bool, error) { return users[u], true, nil }
	plans := make([]entryPlan, 0, len(order))
	for _, u := range order {
		cur := users[u]
		in, err := spool.Input(c.Host, u, cur, cur, other)
		if err != nil {
			return s, nil, nil, err
		}
		plans = append(plans, entryPlan{uuid: u, cur: cur, plan: mailbox.PlanFor(in, s)})
	}
	return s, spool, plans, nil
}

// checkMailbox asks the handler's plan what it would still do for each
// entry and each owner marker: every step left is a disagreement, and the
// homes the plan keeps by policy (delete=no, an address given up) are
// reported apart, not counted. Homes without an owner marker that no
// user's address names are orphans.
func checkMailbox(c *config.Config, entries []event.Entry) (Checked, error) {
	s, spool, plans, err := mailboxPlans(c, entries)
	if err != nil {
		return Checked{}, err
	}
	var out Checked
	named := map[string]bool{}
	n := 0
	for _, ep := range plans {
		cur, p := ep.cur, ep.plan
		if hp, ok := responsibleHome(s, cur); ok {
			n++
			if hp != "" {
				named[hp] = true
			}
		}
		if p.Refused != nil {
			what := ep.uuid
			if cur != nil {
				what = cur.Address
			}
			out.Found = append(out.Found, Disagreement{"refused address", what, p.Refused.Error()})
		}
		for _, st := range p.Steps {
			switch st.Kind {
			case mailbox.StepCreate:
				out.Found = append(out.Found, Disagreement{"missing mailbox", st.Address, fmt.Sprintf("%s has no home %s", cur.DN, st.Path)})
			case mailbox.StepMove:
				out.Found = append(out.Found, Disagreement{"misplaced mailbox", st.FromPath, fmt.Sprintf("%s has the address %s now: %s", cur.DN, st.Address, st)})
			case mailbox.StepAttic:
				out.Found = append(out.Found, Disagreement{"foreign mailbox", st.Path, fmt.Sprintf("%s has the address, the home was made for %s (%s)",
					cur.DN, st.Home.Owner.DN, st.Home.Owner.Address)})
			case mailbox.StepTrash:
				out.Found = append(out.Found, Disagreement{"undeleted mailbox", st.Path, fmt.Sprintf("made for %s (%s), which no longer has it here; %s=yes",
					st.Home.Owner.DN, st.Home.Owner.Address, config.KeyDelete)})
			default:
				out.Found = append(out.Found, Disagreement{"pending mailbox step", st.Path, st.String()})
			}
		}
		for _, h := range p.Kept {
			why := "its entry is gone"
			if cur != nil {
				why = fmt.Sprintf("%s has %q now", cur.DN, cur.Address)
			}
			out.Kept = append(out.Kept, Disagreement{"kept by policy", h.Path, fmt.Sprintf("made for %s (%s); %s; %s=no",
				h.Owner.DN, h.Owner.Address, why, config.KeyDelete)})
		}
	}
	for _, p := range spool.Unmarked() {
		if !named[p] {
			out.Found = append(out.Found, Disagreement{"orphaned mailbox", p, "no user this host is responsible for has this address, and it has no owner marker"})
		}
	}
	drift, err := publicDrift(c, plans)
	if err != nil {
		return Checked{}, err
	}
	out.Found = append(out.Found, drift...)
	out.Summary = []string{fmt.Sprintf("%d mailboxes", n)}
	return out, nil
}

// publicDrift compares the public namespaces installed in Dovecot's
// configuration with those of the public folders homed here, where
// mailsync installs them (configure lists dovecot); without a public folder
// here, files not installed yet are no drift. A folder whose cn cannot name
// a namespace is reported as refused already.
func publicDrift(c *config.Config, plans []entryPlan) ([]Disagreement, error) {
	if !slices.Contains(c.Configure, "dovecot") {
		return nil, nil
	}
	var names []string
	for _, ep := range plans {
		if n := ep.cur.PublicFolder(); n != "" && ep.plan.Refused == nil && identity.Responsible(ep.cur.HomeServer, c.Host) {
			names = append(names, n)
		}
	}
	p, err := mailconf.HostFor(c).PublicProduct(names)
	if err != nil {
		return nil, err
	}
	drift, err := mailconf.Drift(p)
	if err != nil {
		return nil, err
	}
	var out []Disagreement
	for _, d := range drift {
		if len(names) == 0 && d.Reason == "missing" {
			continue // no public folder here: Dovecot lacks nothing
		}
		out = append(out, Disagreement{p.Name + " config drift", d.Path, d.Reason})
	}
	return out, nil
}

// planMailbox says what the mailbox handler would do: its own plan from
// the state before the change, taken as applied on this host, to the state
// after it, against the homes on disk now.
func planMailbox(c *config.Config, _ map[string]event.Entry) (Planner, error) {
	s, err := MailboxSettings(c)
	if err != nil {
		return nil, err
	}
	spool, err := mailbox.ReadSpool(s.Layout, s.Public)
	if err != nil {
		return nil, err
	}
	return func(ev event.Event, dir map[string]event.Entry) (string, []string) {
		if ev.Kind != event.KindUser && ev.Kind != event.KindFolder {
			return "nothing (not a user or shared folder)", nil
		}
		var cur, applied *mailbox.State
		if ev.Op != event.OpDelete {
			if st, ok := mailbox.StateOf(event.Entry{UUID: ev.UUID, DN: ev.DN, Kind: ev.Kind, Attrs: ev.New, CSN: ev.CSN}); ok {
				cur = &st
			}
		}
		if ev.Op != event.OpAdd {
			dn := ev.DN
			if ev.OldDN != "" {
				dn = ev.OldDN
			}
			if st, ok := mailbox.StateOf(event.Entry{UUID: ev.UUID, DN: dn, Kind: ev.Kind, Attrs: ev.Old}); ok {
				applied = &st
			}
		}
		in, err := spool.Input(c.Host, ev.UUID, cur, applied, func(u string) (*mailbox.State, bool, error) {
			e, ok := dir[u]
			if !ok {
				return nil, true, nil
			}
			st, ok := mailbox.StateOf(e)
			if !ok {
				return nil, true, nil
			}
			return &st, true, nil
		})
		if err != nil {
			return "cannot read the spool: " + err.Error(), nil
		}
		p := mailbox.PlanFor(in, s)
		if p.Done() {
			return "nothing to do on " + c.Host, nil
		}
		return p.String(), nil
	}, nil
}

// resyncMailbox creates the missing homes of the users this host is
// responsible for: those the handler's plan would create, each by the
// handler itself, as an add event would.
func resyncMailbox(ctx context.Context, c *config.Config, rh runner.Handler, entries []event.Entry, o Output) error {
	h, ok := rh.(*mailbox.Handler)
	if !ok {
		return fmt.Errorf("resync %s: not the mailbox handler", mailbox.Name)
	}
	t := time.Now()
	s, _, plans, err := mailboxPlans(c, entries)
	if err != nil {
		return err
	}
	byUUID := make(map[string]event.Entry, len(entries))
	for _, e := range entries {
		byUUID[e.UUID] = e
	}
	var missing []event.Entry
	responsible := 0
	for _, ep := range plans {
		e, ok := byUUID[ep.uuid]
		if !ok || e.Kind != event.KindUser {
			continue
		}
		if hp, _ := responsibleHome(s, ep.cur); hp != "" {
			responsible++
		}
		// Only homes that do not exist: one that does is left alone,
		// even if the plan would move it aside (resync moves nothing).
		for _, st := range ep.plan.Steps {
			if _, err := os.Stat(st.Path); st.Kind == mailbox.StepCreate && errors.Is(err, fs.ErrNotExist) {
				missing = append(missing, e)
				break
			}
		}
	}
	fmt.Fprintf(o.Stdout, "mailbox: %d responsible users, %d homes missing\n", responsible, len(missing))
	bar := newProgress(o.Stderr, len(missing), mailbox.Name)
	var mu sync.Mutex
	var failed []error
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(o.Workers, 1))
	for _, e := range missing {
		g.Go(func() error {
			ev := event.Event{V: event.Version, Op: event.OpAdd, Kind: e.Kind, UUID: e.UUID,
				DN: e.DN, New: e.Attrs, CSN: e.CSN, At: time.Now().UTC()}
			if err := h.Handle(gctx, ev); err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
			bar.Add(1)
			return nil
		})
	}
	err = g.Wait()
	bar.Finish()
	if err != nil {
		return err
	}
	for _, f := range failed {
		fmt.Fprintf(o.Stdout, "mailbox: %v\n", f)
	}
	if len(failed) > 0 {
		return fmt.Errorf("resync mailbox: %d of %d mailboxes not created", len(failed), len(missing))
	}
	fmt.Fprintf(o.Stdout, "mailbox: %d created in %s\n", len(missing), time.Since(t).Round(time.Millisecond))
	return nil
}

// progress shows how far a long step is: a bar on a terminal, a plain line
// every tenth otherwise (logs, pipes).
type progress interface {
	Add(n int)
	Finish()
}

func newProgress(w io.Writer, total int, what string) progress {
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		return barProgress{progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("mailboxes"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		)}
	}
	return &lineProgress{w: w, total: total, what: what}
}

type barProgress struct{ b *progressbar.ProgressBar }

func (p barProgress) Add(n int) { _ = p.b.Add(n) }
func (p barProgress) Finish()   { _ = p.b.Finish() }

type lineProgress struct {
	mu          sync.Mutex
	w           io.Writer
	total, done int
	next        int // the tenth to report next
	what        string
}

func (p *lineProgress) Add(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	for p.total > 0 && p.next < 10 && p.done*10 >= (p.next+1)*p.total {
		p.next++
		fmt.Fprintf(p.w, "%s: %d/%d (%d%%)\n", p.what, p.done, p.total, p.next*10)
	}
}

func (p *lineProgress) Finish() {}
