package main

import (
	"context"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"mailsync/config"
	"mailsync/handlers/registry"
	"mailsync/runner"
)

// buildHandlers makes the handlers the config enables (package registry);
// installed, when set, learns every map installed (metrics). closeAll
// closes those that hold resources. hs are in registry.Enabled's order.
func buildHandlers(ctx context.Context, cfg *config.Config, log zerolog.Logger, installed func(string, time.Duration)) (hs []runner.Handler, closeAll func(), err error) {
	closeAll = func() {
		for _, h := range hs {
			if c, ok := h.(interface{ Close() error }); ok {
				_ = c.Close()
			}
		}
	}
	d := registry.Deps{Log: log, Installed: installed, Doveadm: func() (*http.Client, error) { return doveadmHTTP(cfg) }, MailboxHooks: testHooks(log)}
	for _, r := range registry.Enabled(cfg) {
		h, err := r.Build(ctx, cfg, d)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		hs = append(hs, h)
	}
	return hs, closeAll, nil
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
