package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"mailsync/config"
	"mailsync/handlers/mailbox"
	"mailsync/listener"
	"mailsync/metrics"
	"mailsync/stream"
)

// addHealthChecks makes /healthz reflect LDAP, NATS and Dovecot.
func addHealthChecks(m *metrics.Metrics, cfg *config.Config, bus *stream.Bus, lst *listener.Listener) {
	m.AddCheck("nats", func(context.Context) error {
		if s := bus.NC.Status(); s != nats.CONNECTED {
			return fmt.Errorf("nats connection %s", s)
		}
		return nil
	})
	if lst != nil {
		m.AddCheck("ldap", func(context.Context) error {
			s := lst.Status()
			if s.Connected || !s.Active {
				return nil // a standby listener is healthy without a connection
			}
			if s.LastError != "" {
				return errors.New(s.LastError)
			}
			return errors.New("not connected")
		})
	}
	if cfg.Dovecot.DoveadmURL != "" && cfg.Wants(mailbox.Name) {
		client, err := doveadmHTTP(cfg)
		if err != nil {
			client = &http.Client{}
		}
		client.Timeout = 3 * time.Second
		m.AddCheck("dovecot", func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.Dovecot.DoveadmURL, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return fmt.Errorf("doveadm api unreachable: %w", err)
			}
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				return fmt.Errorf("doveadm api answers %s", resp.Status)
			}
			return nil
		})
	}
}

// notifyReady tells systemd the daemon is up (Type=notify) and, when the
// unit sets WatchdogSec, pets the watchdog while the dependencies are
// healthy, so a wedged daemon is restarted.
func notifyReady(ctx context.Context, m *metrics.Metrics, log zerolog.Logger) {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn().Err(err).Msg("notify systemd")
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	go func() {
		t := time.NewTicker(interval / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				healthy := true
				for name, err := range m.Health(ctx) {
					if err != nil && name == "nats" {
						healthy = false
					}
				}
				if healthy {
					_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
				}
			}
		}
	}()
}
