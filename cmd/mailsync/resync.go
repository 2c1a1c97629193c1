package main

import (
	"errors"
	"fmt"
	"time"

	"mailsync/handlers/registry"
)

type resyncCmd struct {
	Handler string `help:"Only this handler: ${handlers} (default: every handler the config enables)." placeholder:"H"`
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
	o := registry.Output{Stdout: e.stdout, Stderr: e.stderr, Workers: c.Workers}
	for i, r := range registry.Enabled(cfg) {
		if err := r.Resync(e.ctx, cfg, hs[i], entries, o); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stdout, "resync done in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}
