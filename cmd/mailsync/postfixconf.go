package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"mailsync/config"
	"mailsync/handlers/aliases"
	"mailsync/mailconf"
)

// postfixProduct renders Postfix's main.cf and master.cf from the settings
// (manual 14.7.1-14.7.8) with this host's paths. The directory is read only
// when mail/archivefolder is set: the archive address must be known there.
func postfixProduct(ctx context.Context, cfg *config.Config) (*mailconf.Product, error) {
	pf := mailconf.Postfix{
		Host:      cfg.Host,
		ConfigDir: cfg.Postfix.ConfigDir,
		QueueDir:  cfg.Postfix.QueueDir,
		DataDir:   cfg.Postfix.DataDir,
		Binary:    cfg.Postfix.Binary,
		Postmap:   cfg.Postfix.Postmap,
		MapDir:    cfg.Postfix.MapDir,
		MapType:   cfg.Postfix.MapType,
		LMTP:      cfg.Dovecot.LMTPAddr,
		AuthPath:  cfg.Dovecot.AuthAddr,
		TLSCert:   cfg.Postfix.TLSCert,
		TLSKey:    cfg.Postfix.TLSKey,
		SMTP:      cfg.Postfix.Listen.SMTP, Submission: cfg.Postfix.Listen.Submission, SMTPS: cfg.Postfix.Listen.SMTPS,
		MainCFLocal:   cfg.Postfix.MainCFLocal,
		MasterCFLocal: filepath.Join(cfg.Postfix.ConfigDir, "master.cf.local"),
	}
	settings := mailconf.Settings(cfg.Policy.Settings)
	if yes, _ := settings.Bool(mailconf.KeyRelayAuth, false); yes {
		if cfg.Postfix.RelayAuthFile == "" {
			return nil, &mailconf.SettingError{Key: mailconf.KeyRelayAuth, Value: settings[mailconf.KeyRelayAuth],
				Reason: "yes needs postfix.relay_auth_file (a file holding username:password)"}
		}
		data, err := os.ReadFile(cfg.Postfix.RelayAuthFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("postfix.relay_auth_file: %w", err)}
		}
		pf.RelayCredentials = strings.TrimSpace(string(data))
	}
	if settings.Get(mailconf.KeyArchiveFolder, "") != "" {
		entries, err := readDirectory(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("read the directory for %s: %w", mailconf.KeyArchiveFolder, err)
		}
		t := aliases.Tables(cfg.Host, cfg.Policy.ExpansionLimit, entries)
		pf.Directory = mailconf.DirectoryFromTables(t[aliases.DomainMap], t[aliases.MailboxMap], t[aliases.AliasMap])
	}
	return mailconf.RenderPostfix(settings, pf)
}
