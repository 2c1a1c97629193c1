package main

import (
	"context"

	"github.com/rs/zerolog"

	"mailsync/config"
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
	return hs, closeAll, nil
}
