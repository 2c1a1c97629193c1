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
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"mailsync/config"
	"mailsync/handlers/registry"
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
	NATSConfig     natsConfigCmd     `cmd:"" name:"nats-config" help:"Write nkeys for mailsync's roles and print an external NATS server's authorization block for them."`
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
	// kong calls Exit after printing --help; parsing then goes on and
	// would report the missing command, so a help request ends here, ok.
	helped := false
	parser, err := kong.New(&c, kong.Name("mailsync"),
		kong.Description("Keeps Dovecot mailboxes and Postfix maps in step with an LDAP directory."),
		kong.Writers(stdout, stderr), kong.Exit(func(int) { helped = true }),
		kong.Vars{"handlers": strings.Join(registry.Known{}.Names(), ", ")})
	if err != nil {
		return err
	}
	kctx, err := parser.Parse(args)
	if helped {
		return nil
	}
	if err != nil {
		return usageError{err}
	}
	if kctx.Command() == "" {
		return nil
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
	cfg, err := registry.Load(path)
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

// Where the embedded server keeps its role credentials and the command
// line's socket, under the state dir.
const (
	natsAuthDir  = "nats-auth"
	natsSockPath = "run/nats.sock"
)

// openBus connects to the configured JetStream. The daemon (daemon true)
// starts the embedded server when no URL is set: no network listener unless
// nats.listen, every connection authenticated with a role's key, the
// daemon's own in process and the command line's through a unix socket in
// the state dir (ServeLocal). The command line connects as the admin role.
// close stops all of it.
func openBus(ctx context.Context, cfg *config.Config, daemon bool) (bus *stream.Bus, closeFn func(), err error) {
	role := stream.RoleAdmin
	if daemon {
		role = stream.RoleWorker
		if cfg.Listener.Enabled {
			role = stream.RoleListener
		}
	}
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	opts := []nats.Option{nats.Name("mailsync " + cfg.Host), nats.MaxReconnects(-1)}
	url := cfg.NATS.URL
	if url == "" {
		url = "nats://embedded"
		authDir := filepath.Join(cfg.StateDir, natsAuthDir)
		sock := filepath.Join(cfg.StateDir, natsSockPath)
		if !daemon {
			if _, err := os.Stat(stream.AdminSeed(authDir)); err != nil {
				return nil, nil, fmt.Errorf("embedded nats: no credentials (has `mailsync run` started on this state_dir?): %w", err)
			}
		}
		creds, err := stream.LoadCredentials(authDir)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, creds.NkeyAuth(role))
		if daemon {
			eo := stream.EmbeddedOptions{StoreDir: filepath.Join(cfg.StateDir, "nats"), Users: creds.Users(), Listen: cfg.NATS.Listen}
			if cfg.NATS.Listen != "" {
				cert, err := tls.LoadX509KeyPair(cfg.NATS.TLSCertFile, cfg.NATS.TLSKeyFile)
				if err != nil {
					return nil, nil, usageError{fmt.Errorf("nats.tls_cert_file: %w", err)}
				}
				eo.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			}
			ns, err := stream.StartEmbedded(eo)
			if err != nil {
				return nil, nil, err
			}
			cleanups = append(cleanups, func() { ns.Shutdown(); ns.WaitForShutdown() })
			stopLocal, err := stream.ServeLocal(ns, sock)
			if err != nil {
				return nil, nil, err
			}
			cleanups = append(cleanups, stopLocal)
			// This process's own connection skips any socket: about a
			// fifth less CPU for a full refresh (BenchmarkInitialRefresh).
			opts = append(opts, nats.InProcessServer(ns))
		} else {
			opts = append(opts, stream.DialLocal(sock))
		}
	} else {
		auth, key := cfg.NATS.NATSAuth, "nats."
		if !daemon && cfg.NATS.Admin != (config.NATSAuth{}) {
			auth, key = cfg.NATS.Admin, "nats.admin."
		}
		aopts, err := authOptions(auth, key)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, aopts...)
		if cfg.NATS.CAFile != "" {
			opts = append(opts, nats.RootCAs(cfg.NATS.CAFile))
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		// nats errors never carry the password or seed
		return nil, nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	cleanups = append(cleanups, func() { _ = nc.Drain(); nc.Close() })
	bus, err = stream.Open(ctx, nc, stream.Options{Replicas: cfg.NATS.Replicas, LookupOnly: role == stream.RoleWorker})
	if err != nil {
		return nil, nil, err
	}
	return bus, cleanup, nil
}

// authOptions are the nats options of one identity; key prefixes the
// config keys named in errors.
func authOptions(a config.NATSAuth, key string) ([]nats.Option, error) {
	var opts []nats.Option
	if a.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(a.CredentialsFile))
	}
	if a.NkeySeedFile != "" {
		opt, err := nats.NkeyOptionFromSeed(a.NkeySeedFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("%snkey_seed_file: %w", key, err)}
		}
		opts = append(opts, opt)
	}
	if a.User != "" {
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	}
	return opts, nil
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
	for _, w := range cfg.Warnings {
		log.Warn().Msg("config: " + w)
	}
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
	handlers, closeHandlers, err := buildHandlers(e.ctx, cfg, log, reloadOnTransport(e.ctx, cfg, log, m.MapWritten))
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

	// The daemon's two parts. Either ending on its own (an error, or a
	// return nobody asked for) ends the daemon with exit 1, so systemd
	// restarts the whole of it: a listener without handlers or handlers
	// without a listener would leave the daemon half alive. Shutdown order:
	// the listener stops first, then the consumers drain, then NATS closes
	// (deferred above).
	lctx, stopListener := context.WithCancel(context.Background())
	rctx, stopRunner := context.WithCancel(context.Background())
	defer stopListener()
	defer stopRunner()
	var lst *listener.Listener
	var listenerDone chan error // nil without a listener: never ready in select
	if cfg.Listener.Enabled {
		lst = listener.New(listener.Config{
			Flavor: flavor,
			URL:    cfg.LDAP.URL, BindDN: cfg.LDAP.BindDN, BindPassword: cfg.LDAP.BindPassword,
			BaseDN: cfg.LDAP.BaseDN, StartTLS: cfg.LDAP.StartTLS, TLS: tlsCfg,
			MassDeleteShare: cfg.Listener.MassDeleteShare, MassDeleteMin: cfg.Listener.MassDeleteMin,
			ConfirmMassDelete: cfg.Listener.ConfirmMassDelete,
			LeaseID:           holder,
		}, bus, log, listener.Hooks{})
		listenerDone = make(chan error, 1)
		go func() { listenerDone <- partEnded(lctx, "listener", lst.Run(lctx)) }()
	}
	rn := runner.New(bus, runner.Config{Host: cfg.Host, Observer: m}, log, handlers...)
	runnerDone := make(chan error, 1)
	go func() { runnerDone <- partEnded(rctx, "runner", rn.Run(rctx)) }()
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

	var failure error
	select {
	case <-e.ctx.Done():
		log.Info().Msg("shutting down")
	case failure = <-listenerDone:
		listenerDone = nil
	case failure = <-runnerDone:
		runnerDone = nil
	}
	if failure != nil {
		log.Error().Err(failure).Msg("stopping")
	}
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	stopListener()
	if listenerDone != nil {
		if err := <-listenerDone; err != nil && failure == nil {
			failure = err
		}
	}
	if lst != nil {
		log.Info().Msg("listener stopped")
	}
	stopRunner()
	if runnerDone != nil {
		if err := <-runnerDone; err != nil && failure == nil {
			failure = err
		}
	}
	log.Info().Msg("runner stopped")
	return failure
}

// partEnded is the daemon's view of a part's return: nil only when the
// part was asked to stop; a part that ends by itself is a failure even
// when it says nothing.
func partEnded(ctx context.Context, name string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if ctx.Err() == nil {
		return fmt.Errorf("%s ended by itself", name)
	}
	return nil
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
