package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"mailsync/config"
	"mailsync/dovecotadm"
	"mailsync/handlers/aliases"
	"mailsync/handlers/homeserver"
	"mailsync/handlers/mailbox"
	"mailsync/runner"
)

// buildHandlers makes the handlers the config enables; installed, when
// set, learns every map installed (metrics).
func buildHandlers(ctx context.Context, cfg *config.Config, log zerolog.Logger, installed func(string, time.Duration)) ([]runner.Handler, func(), error) {
	var hs []runner.Handler
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			_ = c()
		}
	}
	if cfg.Wants("aliases") {
		h, err := aliases.New(aliases.Config{
			Installed:        installed,
			Dir:              cfg.Postfix.MapDir,
			MapType:          cfg.Postfix.MapType,
			ExpansionLimit:   cfg.Policy.ExpansionLimit,
			Coalesce:         cfg.Postfix.Coalesce,
			PostmapPath:      cfg.Postfix.Postmap,
			PostfixConfigDir: cfg.Postfix.ConfigDir,
			HostFQDN:         cfg.Host,
			WriteMainCFLocal: cfg.Postfix.WriteMainCFLocal,
			MainCFLocal:      cfg.Postfix.MainCFLocal,
		}, log.With().Str("handler", "aliases").Logger())
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("start aliases handler: %w", err)
		}
		hs = append(hs, h)
		closers = append(closers, h.Close)
	}
	if cfg.Wants("mailbox") {
		h, err := newMailboxHandler(cfg, log)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		hs = append(hs, h)
	}
	// homeserver
	if cfg.Wants("homeserver") {
		h, err := homeserver.New(homeserver.Config{
			Installed:        installed,
			Host:             cfg.Host,
			Dir:              cfg.Postfix.MapDir,
			MapType:          cfg.Postfix.MapType,
			PostmapPath:      cfg.Postfix.Postmap,
			PostfixConfigDir: cfg.Postfix.ConfigDir,
			Coalesce:         cfg.Postfix.Coalesce,
		})
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("start homeserver handler: %w", err)
		}
		hs = append(hs, h)
		closers = append(closers, h.Close)
	}
	return hs, closeAll, nil
}

func newMailboxHandler(cfg *config.Config, log zerolog.Logger) (*mailbox.Handler, error) {
	uid, gid, err := parseOwner(cfg.Dovecot.Owner)
	if err != nil {
		return nil, usageError{fmt.Errorf("dovecot.owner: %w", err)}
	}
	hc, err := doveadmHTTP(cfg)
	if err != nil {
		return nil, err
	}
	adm, err := dovecotadm.New(cfg.Dovecot.DoveadmURL, cfg.Dovecot.APIKey, dovecotadm.WithHTTPClient(hc))
	if err != nil {
		return nil, usageError{fmt.Errorf("dovecot.doveadm_url: %w", err)}
	}
	hooks := testHooks(log)
	var mover mailbox.Mover
	if cfg.Policy.MoveOnHomeChange {
		if mover, err = newMover(cfg, adm, log); err != nil {
			return nil, err
		}
	}
	h, err := mailbox.New(mailbox.Config{
		Host:          cfg.Host,
		MailHome:      cfg.Dovecot.MailHome,
		IndexHome:     cfg.Dovecot.IndexHome,
		SeparateIndex: cfg.Policy.SeparateIndex,
		Rename:        cfg.Policy.Rename,
		Delete:        cfg.Policy.Delete,
		Folders:       []string{cfg.Policy.FolderSpam, cfg.Policy.FolderHam},
		StateDir:      cfg.StateDir,
		UID:           uid,
		GID:           gid,

		MoveOnHomeChange: mover != nil,
		Mover:            mover,
	}, adm, log, hooks)
	if err != nil {
		return nil, usageError{fmt.Errorf("mailbox handler (dovecot.mail_home, dovecot.index_home, state_dir): %w", err)}
	}
	return h, nil
}

// newMover builds the Mover of move_on_homeserver_change from the peers.
func newMover(cfg *config.Config, adm *dovecotadm.Client, log zerolog.Logger) (*homeserver.Mover, error) {
	hc, err := doveadmHTTP(cfg)
	if err != nil {
		return nil, err
	}
	peers := map[string]homeserver.Peer{}
	for host, p := range cfg.Peers {
		c, err := dovecotadm.New(p.DoveadmURL, p.APIKey, dovecotadm.WithHTTPClient(hc))
		if err != nil {
			return nil, usageError{fmt.Errorf("peers.%s.doveadm_url: %w", host, err)}
		}
		peers[host] = homeserver.Peer{Doveadm: c, Dsync: "tcp:" + p.DoveadmTCP}
	}
	m, err := homeserver.NewMover(homeserver.MoveConfig{Host: cfg.Host, StateDir: cfg.StateDir,
		Userdb: cfg.Dovecot.MovingUserdb, Local: adm, Peers: peers}, log, homeserver.MoverHooks{})
	if err != nil {
		return nil, usageError{fmt.Errorf("dovecot.moving_userdb, state_dir: %w", err)}
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

// doveadmHTTP is the HTTP client for doveadm APIs: HTTPS verified against
// dovecot.ca_file when set.
func doveadmHTTP(cfg *config.Config) (*http.Client, error) {
	tc, err := caTLS(cfg.Dovecot.CAFile, "dovecot.ca_file")
	if err != nil || tc == nil {
		return &http.Client{}, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}, nil
}
