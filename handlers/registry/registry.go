// Package registry is the one list of mailsync's handlers: for each, its
// name, the settings it needs, how it is built for the daemon, and what it
// does for the command line's check, plan and resync. Config validation
// reads it (the handler names the config may enable, all of them by
// default; what each enabled one needs), and so do the daemon and every
// verb, so a new handler is added here and nowhere else.
package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"mailsync/config"
	"mailsync/event"
	"mailsync/handlers/aliases"
	"mailsync/handlers/homeserver"
	"mailsync/handlers/mailbox"
	"mailsync/runner"
)

// Handler is one handler as the daemon and the command line know it.
type Handler struct {
	// Name names the handler in the config (handlers), its consumers
	// (<name>-<host>) and its log lines.
	Name string
	// Validate checks the settings the handler needs when enabled, each
	// error naming its key; nil: none beyond the config's own.
	Validate func(c *config.Config) []error
	// Build makes the running handler (`mailsync run`, resync). A handler
	// that holds resources also has Close() error.
	Build func(ctx context.Context, c *config.Config, d Deps) (runner.Handler, error)
	// Check compares what this host holds for the handler with the
	// directory (entries, read from LDAP): `mailsync check`.
	Check func(c *config.Config, entries []event.Entry) (Checked, error)
	// Plan prepares to say what the handler would do with planned events,
	// from the directory as the entries bucket holds it (`mailsync plan`).
	Plan func(c *config.Config, dir map[string]event.Entry) (Planner, error)
	// Resync brings this host to the directory with the built handler,
	// deleting and moving nothing (`mailsync resync`).
	Resync func(ctx context.Context, c *config.Config, h runner.Handler, entries []event.Entry, o Output) error
}

// Deps are what building a handler takes from the process around it.
type Deps struct {
	Log zerolog.Logger
	// Installed, when set, learns every map installed (metrics).
	Installed func(table string, took time.Duration)
	// Doveadm makes the HTTP client for doveadm APIs (dovecot.ca_file).
	Doveadm func() (*http.Client, error)
	// MailboxHooks are the mailbox handler's test hooks (none in a
	// release build).
	MailboxHooks mailbox.Hooks
}

// Disagreement is one thing check found out of step with the directory.
type Disagreement struct {
	Kind   string // "orphaned mailbox", "missing map entry", ...
	What   string // a path, an address, a map key
	Detail string
}

// Checked is what a handler's check found: disagreements, what the
// handler keeps by policy (reported, not counted), and a summary of what
// was compared ("2 mailboxes", "transport (3 keys)").
type Checked struct {
	Found, Kept []Disagreement
	Summary     []string
}

// Planner says what a handler would do with one planned event, dir being
// the directory after it: a one-line summary, or lines under the
// handler's name when there are several.
type Planner func(ev event.Event, dir map[string]event.Entry) (summary string, lines []string)

// Output is where resync reports.
type Output struct {
	Stdout, Stderr io.Writer
	// Workers is how many mailboxes are created at once.
	Workers int
}

// SettingError is a setting a handler cannot start with: the command
// line exits 2 for it, as for a config error.
type SettingError struct {
	Key string
	Err error
}

func (e *SettingError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *SettingError) Unwrap() error { return e.Err }

// all are the handlers, in the order they are built and reported.
var all = []Handler{
	mapHandler(aliases.Name, buildAliases, aliasMaps),
	{Name: mailbox.Name, Validate: validateMailbox, Build: buildMailbox, Check: checkMailbox, Plan: planMailbox, Resync: resyncMailbox},
	mapHandler(homeserver.Name, buildHomeserver, transportMap),
}

// All returns every handler, in order.
func All() []Handler { return append([]Handler(nil), all...) }

// Lookup returns the handler called name.
func Lookup(name string) (Handler, bool) {
	for _, h := range all {
		if h.Name == name {
			return h, true
		}
	}
	return Handler{}, false
}

// Enabled returns the handlers c enables, in the registry's order.
func Enabled(c *config.Config) []Handler {
	var out []Handler
	for _, h := range all {
		if c.Wants(h.Name) {
			out = append(out, h)
		}
	}
	return out
}

// Known is the registry as config loading asks it (config.Handlers).
type Known struct{}

// Names are the handlers' names, in order: the default set.
func (Known) Names() []string {
	out := make([]string, len(all))
	for i, h := range all {
		out[i] = h.Name
	}
	return out
}

// Validate checks the handler names c enables and what each one needs.
func (v Known) Validate(c *config.Config) []error {
	var errs []error
	for i, name := range c.Handlers {
		h, ok := Lookup(name)
		if !ok {
			errs = append(errs, fmt.Errorf("handlers[%d]: unknown handler %q (want %s)", i, name, orList(v.Names())))
			continue
		}
		if h.Validate != nil {
			errs = append(errs, h.Validate(c)...)
		}
	}
	if c.Policy.MoveOnHomeChange && !c.Wants(mailbox.Name) {
		errs = append(errs, fmt.Errorf("policy.%s: yes needs the %s handler (handlers)", config.KeyMoveOnHomeChange, mailbox.Name))
	}
	return errs
}

// Load reads the config file at path, validated against the handlers here.
func Load(path string) (*config.Config, error) { return config.Load(path, Known{}) }

func orList(w []string) string {
	s := ""
	for i, x := range w {
		switch {
		case i == 0:
		case i == len(w)-1:
			s += " or "
		default:
			s += ", "
		}
		s += x
	}
	return s
}
