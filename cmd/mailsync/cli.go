package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"mailsync/config"
	"mailsync/listener"
	"mailsync/metrics"
	"mailsync/runner"
	"mailsync/stream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

type cli struct {
	Config string `short:"c" help:"Config file." default:"/etc/mailsync/mailsync.yaml" type:"path"`

	Run            runCmd            `cmd:"" help:"Follow the directory and keep mailboxes and maps in step."`
	Version        versionCmd        `cmd:"" help:"Print the version."`
	ConfirmDeletes confirmDeletesCmd `cmd:"" name:"confirm-deletes" help:"Publish the deletes held by the mass-delete guard."`
	Status         statusCmd         `cmd:"" help:"Show stream position, listener state, per-handler pending and dead-lettered counts."`
	Dead           deadCmd           `cmd:"" help:"List, retry or drop dead-lettered events."`
	Check          checkCmd          `cmd:"" help:"Compare the directory with this host's mailboxes and maps; exit 1 on any disagreement. Changes nothing."`
	Resync         resyncCmd         `cmd:"" help:"Rebuild the maps and create missing mailboxes from the directory (never deletes)."`
	Replay         replayCmd         `cmd:"" help:"Make this host's handlers re-apply events from a stream sequence or time."`
	Plan           planCmd           `cmd:"" help:"Show what an LDIF change would do on this host, doing nothing."`
	Configure      configureCmd      `cmd:"" help:"Render Postfix's (and Dovecot's) configuration from the settings, validate it, install it atomically and reload; --dry-run shows the diff."`
	Attic          atticCmd          `cmd:"" help:"List or restore the homes moved aside when their address went to another user."`
}

type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	cfg    string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c cli
	parser, err := kong.New(&c, kong.Name("mailsync"),
		kong.Description("Keeps Dovecot mailboxes and Postfix maps in step with an LDAP directory."),
		kong.Writers(stdout, stderr), kong.Exit(func(int) {}))
	if err != nil {
		return err
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		return usageError{err}
	}
	if kctx.Command() == "" {
		return nil // --help
	}
	return kctx.Run(&env{ctx: ctx, stdout: stdout, stderr: stderr, cfg: c.Config})
}

type versionCmd struct{}

func (versionCmd) Run(e *env) error {
	v := version
	if v == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			v = bi.Main.Version
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					v += " " + s.Value[:12]
				}
			}
		}
	}
	fmt.Fprintln(e.stdout, "mailsync", v)
	return nil
}

func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

func newLogger(cfg *config.Config, w io.Writer) zerolog.Logger {
	lvl, _ := zerolog.ParseLevel(cfg.Log.Level)
	out := w
	console := cfg.Log.Format == "console"
	if cfg.Log.Format == "auto" {
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			console = true
		}
	}
	if console {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Str("host", cfg.Host).Logger()
}

// openBus connects to the configured JetStream, starting the embedded
// server when no URL is set. close stops both.
func openBus(ctx context.Context, cfg *config.Config, embedded bool) (bus *stream.Bus, closeFn func(), err error) {
	var ns *server.Server
	url := cfg.NATS.URL
	if url == "" {
		if !embedded {
			url = fmt.Sprintf("nats://127.0.0.1:%d", cfg.NATS.Port)
		} else {
			ns, err = stream.StartEmbedded(stream.EmbeddedOptions{StoreDir: filepath.Join(cfg.StateDir, "nats"), Port: cfg.NATS.Port})
			if err != nil {
				return nil, nil, err
			}
			url = ns.ClientURL()
		}
	}
	opts := []nats.Option{nats.Name("mailsync " + cfg.Host), nats.MaxReconnects(-1)}
	if ns != nil {
		// This process's own connection skips the loopback socket: about a
		// fifth less CPU for a full refresh (BenchmarkInitialRefresh).
		opts = append(opts, nats.InProcessServer(ns))
	}
	if cfg.NATS.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.CredentialsFile))
	}
	if cfg.NATS.NkeySeedFile != "" {
		opt, err := nats.NkeyOptionFromSeed(cfg.NATS.NkeySeedFile)
		if err != nil {
			return nil, nil, usageError{fmt.Errorf("nats.nkey_seed_file: %w", err)}
		}
		opts = append(opts, opt)
	}
	if cfg.NATS.User != "" {
		opts = append(opts, nats.UserInfo(cfg.NATS.User, cfg.NATS.Password))
	}
	if cfg.NATS.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.NATS.CAFile))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		if ns != nil {
			ns.Shutdown()
		}
		// nats errors never carry the password or seed
		return nil, nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	bus, err = stream.Open(ctx, nc, stream.Options{Replicas: cfg.NATS.Replicas})
	if err != nil {
		nc.Close()
		if ns != nil {
			ns.Shutdown()
		}
		return nil, nil, err
	}
	return bus, func() {
		_ = nc.Drain()
		nc.Close()
		if ns != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	}, nil
}

func ldapTLS(cfg *config.Config) (*tls.Config, error) {
	return caTLS(cfg.LDAP.CAFile, "ldap.ca_file")
}

// caTLS is a TLS client config trusting the CA in file (named by key in
// errors); nil when file is empty.
func caTLS(file, key string) (*tls.Config, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, usageError{fmt.Errorf("%s: %w", key, err)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, usageError{fmt.Errorf("%s: no certificate in %s", key, file)}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

type runCmd struct{}

func (runCmd) Run(e *env) error {
	cfg, err := loadConfig(e.cfg)
	if err != nil {
		return err
	}
	log := newLogger(cfg, e.stderr)
	tlsCfg, err := ldapTLS(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	unlock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	holder, err := listener.HolderID(cfg.Host, cfg.StateDir)
	if err != nil {
		return err
	}
	flavor, err := listener.ParseFlavor(cfg.LDAP.Flavor)
	if err != nil {
		return usageError{fmt.Errorf("ldap.flavor: %w", err)}
	}
	m := metrics.New()
	handlers, closeHandlers, err := buildHandlers(e.ctx, cfg, log, m.MapWritten)
	if err != nil {
		return err
	}
	defer closeHandlers()

	bus, closeBus, err := openBus(e.ctx, cfg, true)
	if err != nil {
		return err
	}
	defer closeBus()
	log.Info().Str("version", version).Strs("handlers", cfg.Handlers).Msg("mailsync running")

	// Shutdown order: the listener stops first, then the consumers drain,
	// then NATS closes (deferred above).
	lctx, stopListener := context.WithCancel(context.Background())
	rctx, stopRunner := context.WithCancel(context.Background())
	var lst *listener.Listener
	g := new(errgroup.Group)
	if *cfg.Listener.Enabled {
		lst = listener.New(listener.Config{
			Flavor: flavor,
			URL:    cfg.LDAP.URL, BindDN: cfg.LDAP.BindDN, BindPassword: cfg.LDAP.BindPassword,
			BaseDN: cfg.LDAP.BaseDN, StartTLS: cfg.LDAP.StartTLS, TLS: tlsCfg,
			MassDeleteShare: cfg.Listener.MassDeleteShare, MassDeleteMin: cfg.Listener.MassDeleteMin,
			ConfirmMassDelete: cfg.Listener.ConfirmMassDelete,
			LeaseID:           holder,
		}, bus, log, listener.Hooks{})
		g.Go(func() error { return lst.Run(lctx) })
	}
	rn := runner.New(bus, runner.Config{Host: cfg.Host, Observer: m}, log, handlers...)
	g.Go(func() error { return rn.Run(rctx) })
	addHealthChecks(m, cfg, bus, lst)
	mctx, stopMetrics := context.WithCancel(context.Background())
	defer stopMetrics()
	if cfg.Metrics.Listen != "off" {
		go func() {
			if err := m.Serve(mctx, cfg.Metrics.Listen); err != nil {
				log.Error().Err(err).Str("listen", cfg.Metrics.Listen).Msg("metrics endpoint")
			}
		}()
	}
	notifyReady(mctx, m, log)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go settingsWatch(mctx, e.cfg, 2*time.Second, hup, log.With().Str("part", "mailconf").Logger())

	errc := make(chan error, 1)
	go func() { errc <- g.Wait() }()
	select {
	case <-e.ctx.Done():
		log.Info().Msg("shutting down")
		_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	case err := <-errc:
		stopListener()
		stopRunner()
		return err
	}
	stopListener()
	stopRunner()
	return <-errc
}

type confirmDeletesCmd struct{}

func (confirmDeletesCmd) Run(e *env) error {
	return withBus(e, func(bus *stream.Bus) error {
		if err := listener.ConfirmDeletes(e.ctx, bus); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, "held deletes confirmed; the running listener publishes them")
		return nil
	})
}
