package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/sync/errgroup"

	"mailsync/event"
	"mailsync/handlers/mailbox"
	"mailsync/runner"
)

type resyncCmd struct {
	Handler string `help:"Only this handler: mailbox, aliases or homeserver (default: every handler the config enables)." placeholder:"H"`
	Workers int    `help:"Mailboxes created at once." default:"4"`
}

// Run rebuilds this host's mail system from the directory, read from LDAP
// itself: the maps by the handlers' own full rebuild (Load), the mailboxes
// by creating every missing home of a responsible user through the mailbox
// handler, as an add event would. Nothing is deleted or moved; homes that
// exist are left alone. Safe beside a running daemon: map writes are atomic
// and mailbox creation is idempotent.
func (c resyncCmd) Run(e *env) error {
	cfg, err := loadConfig(e.cfg)
	if err != nil {
		return err
	}
	if c.Handler != "" {
		if !cfg.Wants(c.Handler) {
			return usageError{fmt.Errorf("resync --handler %s: not one of this host's handlers %v", c.Handler, cfg.Handlers)}
		}
		cfg.Handlers = []string{c.Handler}
	}
	if c.Workers < 1 {
		return usageError{errors.New("resync --workers: want at least 1")}
	}
	log := newLogger(cfg, e.stderr)
	start := time.Now()
	fmt.Fprintf(e.stdout, "reading the directory %s\n", cfg.LDAP.URL)
	entries, err := readDirectory(e.ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "read %d entries in %s\n", len(entries), time.Since(start).Round(time.Millisecond))
	hs, closeHandlers, err := buildHandlers(e.ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	defer closeHandlers()
	for _, h := range hs {
		t := time.Now()
		switch h := h.(type) {
		case *mailbox.Handler:
			if err := c.mailboxes(e, cfg.Dovecot.MailHome, cfg.Host, h, entries); err != nil {
				return err
			}
		case runner.Loader:
			if err := h.Load(e.ctx, entries); err != nil {
				return fmt.Errorf("resync %s: %w", h.(runner.Handler).Name(), err)
			}
			fmt.Fprintf(e.stdout, "%s: maps rebuilt in %s\n", h.(runner.Handler).Name(), time.Since(t).Round(time.Millisecond))
		}
	}
	fmt.Fprintf(e.stdout, "resync done in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// mailboxes creates the missing homes of the users this host is
// responsible for.
func (c resyncCmd) mailboxes(e *env, mailHome, host string, h *mailbox.Handler, entries []event.Entry) error {
	t := time.Now()
	exp, err := expectedHomes(mailHome, host, entries)
	if err != nil {
		return err
	}
	var missing []string
	for p := range exp.homes {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, p)
		}
	}
	sort.Strings(missing)
	fmt.Fprintf(e.stdout, "mailbox: %d responsible users, %d homes missing\n", len(exp.homes), len(missing))
	bar := newProgress(e.stderr, len(missing), "mailbox")
	var mu sync.Mutex
	var failed []error
	g, ctx := errgroup.WithContext(e.ctx)
	g.SetLimit(c.Workers)
	for _, p := range missing {
		o := exp.homes[p]
		g.Go(func() error {
			ev := event.Event{V: event.Version, Op: event.OpAdd, Kind: o.entry.Kind, UUID: o.entry.UUID,
				DN: o.entry.DN, New: o.entry.Attrs, CSN: o.entry.CSN, At: time.Now().UTC()}
			if err := h.Handle(ctx, ev); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
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
		fmt.Fprintf(e.stdout, "mailbox: %v\n", f)
	}
	if len(failed) > 0 {
		return fmt.Errorf("resync mailbox: %d of %d mailboxes not created", len(failed), len(missing))
	}
	fmt.Fprintf(e.stdout, "mailbox: %d created in %s\n", len(missing), time.Since(t).Round(time.Millisecond))
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
