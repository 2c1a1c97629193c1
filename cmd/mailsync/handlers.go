package main

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	"mailsync/config"
	"mailsync/handlers/aliases"
	"mailsync/handlers/homeserver"
	"mailsync/runner"
)

// buildHandlers makes the handlers the config enables.
func buildHandlers(ctx context.Context, cfg *config.Config, log zerolog.Logger) ([]runner.Handler, func(), error) {
	var hs []runner.Handler
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			_ = c()
		}
	}
	if cfg.Wants("aliases") {
		h, err := aliases.New(aliases.Config{
			Dir:              cfg.Postfix.MapDir,
			MapType:          cfg.Postfix.MapType,
			ExpansionLimit:   cfg.Int(config.KeyExpansionLimit),
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
	// mailbox
	// homeserver
	if cfg.Wants("homeserver") {
		h, err := homeserver.New(homeserver.Config{
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
	}
	return hs, closeAll, nil
}
