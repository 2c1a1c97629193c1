package main

import (
	"context"

	"mailsync/config"
	"mailsync/handlers/registry"
	"mailsync/mailconf"
)

// configDrift compares the configuration of each server mailsync configures
// (config key configure) as the settings render it with what is installed:
// a hand edit of main.cf, a missing master.cf, a wrong mode on smtp_auth.
func configDrift(ctx context.Context, cfg *config.Config) ([]registry.Disagreement, error) {
	if len(cfg.Configure) == 0 {
		return nil, nil
	}
	ps, err := renderProducts(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var found []registry.Disagreement
	for _, p := range ps {
		drift, err := mailconf.Drift(p)
		if err != nil {
			return nil, err
		}
		for _, d := range drift {
			found = append(found, registry.Disagreement{Kind: p.Name + " config drift", What: d.Path, Detail: d.Reason})
		}
	}
	return found, nil
}
