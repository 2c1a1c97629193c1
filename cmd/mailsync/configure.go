package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"mailsync/config"
	"mailsync/handlers/homeserver"
	"mailsync/handlers/registry"
	"mailsync/mailconf"
)

// product is a server whose configuration mailsync renders.
type product struct {
	name string // as the config's configure list names it
	// render makes its files from the config's settings (mailconf.Settings
	// from cfg.Policy) and says how to validate and reload them.
	render func(ctx context.Context, cfg *config.Config) (*mailconf.Product, error)
}

// products are the servers mailsync can configure, in install order; the
// config's configure list picks among them.
var products = []product{
	{"postfix", postfixProduct},
	{"dovecot", renderDovecot},
	{"dovecot", renderDovecotUnit},
}

type configureCmd struct {
	DryRun bool `name:"dry-run" help:"Print what would change as a diff and write nothing."`
}

// Run renders every product, validates them all, then installs them.
// A bad setting writes nothing: exit 2, naming the variable.
func (c configureCmd) Run(e *env) error {
	cfg, err := loadConfig(e.cfg)
	if err != nil {
		return err
	}
	if len(cfg.Configure) == 0 {
		return usageError{errors.New("configure: no server to configure: list them in the config's configure key (postfix, dovecot)")}
	}
	ps, err := renderProducts(e.ctx, cfg)
	if err != nil {
		return err
	}
	for _, p := range ps {
		for _, w := range p.Warnings {
			fmt.Fprintf(e.stderr, "%s: warning: %s\n", p.Name, w)
		}
	}
	if c.DryRun {
		for _, p := range ps {
			d, err := mailconf.Diff(p)
			if err != nil {
				return err
			}
			if d == "" {
				fmt.Fprintf(e.stdout, "%s: up to date\n", p.Name)
				continue
			}
			fmt.Fprint(e.stdout, d)
		}
		return nil
	}
	return installProducts(e.ctx, ps, e.stdout)
}

// renderProducts renders and validates every product; nothing is written.
func renderProducts(ctx context.Context, cfg *config.Config) ([]*mailconf.Product, error) {
	var ps []*mailconf.Product
	for _, pr := range products {
		if !slices.Contains(cfg.Configure, pr.name) {
			continue
		}
		p, err := pr.render(ctx, cfg)
		if err != nil {
			return nil, settingFailure(err)
		}
		if p == nil {
			continue // nothing to render for this part (e.g. no systemd drop-in)
		}
		if err := mailconf.Check(ctx, p); err != nil {
			return nil, settingFailure(err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// settingFailure makes a bad setting a usage error (exit 2).
func settingFailure(err error) error {
	var se *mailconf.SettingError
	if errors.As(err, &se) {
		return usageError{err}
	}
	return err
}

func installProducts(ctx context.Context, ps []*mailconf.Product, out io.Writer) error {
	for _, p := range ps {
		changed, err := mailconf.Install(ctx, p)
		if err != nil {
			return err
		}
		if len(changed) == 0 {
			fmt.Fprintf(out, "%s: up to date\n", p.Name)
			continue
		}
		for _, f := range changed {
			fmt.Fprintf(out, "%s: wrote %s\n", p.Name, f)
		}
	}
	return nil
}

// settingsWatch re-renders the servers' configuration while `mailsync run`
// runs: once at start, then whenever the config file or the UCR file
// changes (polled every interval) or a SIGHUP arrives on hup. A bad setting
// is logged and the installed configuration stays as it was.
func settingsWatch(ctx context.Context, path string, interval time.Duration, hup <-chan os.Signal, log zerolog.Logger) {
	var last string
	stamp := func() string {
		s := ""
		files := []string{path}
		if cfg, err := registry.Load(path); err == nil && cfg.UCRFile != "" {
			files = append(files, cfg.UCRFile)
		}
		for _, f := range files {
			if st, err := os.Stat(f); err == nil {
				s += fmt.Sprintf("%s %d %d;", f, st.Size(), st.ModTime().UnixNano())
			}
		}
		return s
	}
	apply := func(why string) {
		last = stamp()
		cfg, err := registry.Load(path)
		if err != nil {
			log.Error().Err(err).Str("why", why).Msg("settings not applied: config does not load")
			return
		}
		ps, err := renderProducts(ctx, cfg)
		if err != nil {
			log.Error().Err(err).Str("why", why).Msg("settings not applied; the installed configuration is unchanged")
			return
		}
		for _, p := range ps {
			for _, w := range p.Warnings {
				log.Warn().Str("product", p.Name).Msg(w)
			}
			changed, err := mailconf.Install(ctx, p)
			if err != nil {
				log.Error().Err(err).Str("product", p.Name).Msg("install configuration")
				continue
			}
			if len(changed) > 0 {
				log.Info().Str("product", p.Name).Strs("files", changed).Str("why", why).Msg("configuration installed")
			}
		}
	}
	if cfg, err := registry.Load(path); err != nil || len(cfg.Configure) == 0 {
		return
	}
	apply("start")
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			apply("SIGHUP")
		case <-t.C:
			if s := stamp(); s != last {
				apply("settings changed")
			}
		}
	}
}

// reloadOnTransport passes each installed map on to next and, when mailsync
// configures Postfix, reloads a running Postfix after the transport map
// changed. Postfix's trivial-rewrite resolves transport_maps and notices a
// changed table only when a client connects anew; qmgr keeps its
// connection while mail flows (up to ipc_ttl, 1000 s), so mail for a user
// whose home server just changed would still go the old way. Reloads are
// coalesced: one runs at a time, and one more after it if maps changed
// meanwhile.
func reloadOnTransport(ctx context.Context, cfg *config.Config, log zerolog.Logger, next func(string, time.Duration)) func(string, time.Duration) {
	if !slices.Contains(cfg.Configure, "postfix") {
		return next
	}
	kick := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
				if err := mailconf.ReloadPostfix(ctx, cfg.Postfix.Binary, cfg.Postfix.ConfigDir); err != nil {
					log.Warn().Err(err).Msg("reload Postfix after a transport map change")
				}
			}
		}
	}()
	return func(table string, took time.Duration) {
		if next != nil {
			next(table, took)
		}
		if table == homeserver.TransportMap {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}
}
