package main

import (
	"context"

	"mailsync/config"
	"mailsync/mailconf"
)

// dovecotHost is the local Dovecot as the config describes it.
func dovecotHost(cfg *config.Config) *mailconf.DovecotHost { return mailconf.HostFor(cfg) }

// renderDovecot renders Dovecot's conf.d fragments (manual 14.7.11–14.7.12).
func renderDovecot(ctx context.Context, cfg *config.Config) (*mailconf.Product, error) {
	conf, _, err := dovecotHost(cfg).Products(ctx, mailconf.Settings(cfg.Policy.Settings))
	return conf, err
}

// renderDovecotUnit renders the systemd drop-in with Dovecot's fd limit;
// nil when dovecot.unit_dropin is none.
func renderDovecotUnit(ctx context.Context, cfg *config.Config) (*mailconf.Product, error) {
	_, unit, err := dovecotHost(cfg).Products(ctx, mailconf.Settings(cfg.Policy.Settings))
	return unit, err
}
