// Package registry is the one list of mailsync's handlers: each one's name
// and the settings it needs. Config validation reads it (the handler names
// the config may enable, all of them by default), and so does the command
// line, so a new handler is added here and nowhere else.
package registry

import (
	"fmt"

	"mailsync/config"
	"mailsync/handlers/aliases"
	"mailsync/handlers/homeserver"
	"mailsync/handlers/mailbox"
)

// Handler is one handler as the command line knows it.
type Handler struct {
	// Name names the handler in the config (handlers), its consumers
	// (<name>-<host>) and its log lines.
	Name string
	// Validate checks the settings the handler needs when enabled, each
	// error naming its key; nil: none beyond the config's own.
	Validate func(c *config.Config) []error
}

// all are the handlers, in the order they are built and reported.
var all = []Handler{
	{Name: aliases.Name},
	{Name: mailbox.Name, Validate: validateMailbox},
	{Name: homeserver.Name},
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

func validateMailbox(c *config.Config) []error {
	if c.Dovecot.DoveadmURL == "" {
		return []error{fmt.Errorf("dovecot.doveadm_url: required by the %s handler", mailbox.Name)}
	}
	return nil
}

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
