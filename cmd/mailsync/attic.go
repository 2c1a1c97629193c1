package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"mailsync/config"
	"mailsync/event"
	"mailsync/handlers/mailbox"
	"mailsync/handlers/registry"
)

// atticCmd lists and restores the homes a reused address moved out of the
// way (package mailbox, attic.go).
type atticCmd struct {
	List    atticListCmd    `cmd:"" help:"List the homes in the attic: homes left at an address another user got."`
	Restore atticRestoreCmd `cmd:"" help:"Restore a home from the attic for an address, never overwriting."`
}

type atticListCmd struct{}

// Run lists the attic of this host's spool.
func (atticListCmd) Run(e *env) error {
	_, s, err := loadMailboxSettings(e)
	if err != nil {
		return err
	}
	homes, err := mailbox.ListAttic(s.Layout)
	if err != nil {
		return err
	}
	if len(homes) == 0 {
		fmt.Fprintln(e.stdout, "the attic is empty")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tADDRESS\tENTRY\tUUID\tSINCE\tMESSAGES")
	for _, h := range homes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", h.Path, h.Owner.Address, h.Owner.DN, h.Owner.UUID, h.At.Format(time.RFC3339), h.Messages)
	}
	return tw.Flush()
}

type atticRestoreCmd struct {
	Path   string `arg:"" help:"The attic home, as 'attic list' shows it."`
	To     string `required:"" help:"The address to restore it for."`
	Entry  string `help:"entryUUID to own the restored home (default: the user the directory gives the address; none: no owner marker)."`
	Folder string `help:"When the address has a home already: the new folder of it that receives the messages (refused if it exists)."`
}

// Run restores an attic home. The owner is the entry the directory gives
// the address, unless --entry names one.
func (c atticRestoreCmd) Run(e *env) error {
	cfg, s, err := loadMailboxSettings(e)
	if err != nil {
		return err
	}
	addr := strings.ToLower(strings.TrimSpace(c.To))
	owner := mailbox.Owner{UUID: c.Entry, Address: addr}
	if owner.UUID == "" {
		entries, err := readDirectory(e.ctx, cfg)
		if err != nil {
			return err
		}
		for _, en := range entries {
			if en.Kind == event.KindUser && en.Attrs.FirstLower(event.AttrPrimaryAddress) == addr {
				owner.UUID, owner.DN = en.UUID, en.DN
			}
		}
	}
	to, err := mailbox.Restore(s.Layout, c.Path, addr, owner, c.Folder)
	if err != nil {
		return fmt.Errorf("attic restore: %w", err)
	}
	who := "no owner marker (no user has the address)"
	if owner.UUID != "" {
		who = "owned by " + owner.UUID
		if owner.DN != "" {
			who += " (" + owner.DN + ")"
		}
	}
	fmt.Fprintf(e.stdout, "restored %s to %s, %s\n", c.Path, to, who)
	return nil
}

// loadMailboxSettings loads the config and the mailbox handler's settings.
func loadMailboxSettings(e *env) (*config.Config, mailbox.Settings, error) {
	cfg, err := loadConfig(e.cfg)
	if err != nil {
		return nil, mailbox.Settings{}, err
	}
	s, err := registry.MailboxSettings(cfg)
	return cfg, s, err
}
