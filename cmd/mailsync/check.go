package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"mailsync/handlers/registry"
)

type checkCmd struct{}

// checkFailed is check's error when the system disagrees with the
// directory: exit code 1, the list is on stdout.
type checkFailed struct{ n int }

func (c checkFailed) Error() string {
	return fmt.Sprintf("check: %d disagreements with the directory", c.n)
}

// Run compares the directory, read from LDAP itself, with this host's
// mailbox homes and with the maps on disk. It changes nothing.
func (checkCmd) Run(e *env) error {
	cfg, err := loadConfig(e.cfg)
	if err != nil {
		return err
	}
	entries, err := readDirectory(e.ctx, cfg)
	if err != nil {
		return err
	}
	var found, kept []registry.Disagreement
	var summary []string
	for _, h := range registry.Enabled(cfg) {
		c, err := h.Check(cfg, entries)
		if err != nil {
			return err
		}
		found, kept = append(found, c.Found...), append(kept, c.Kept...)
		summary = append(summary, c.Summary...)
	}
	conf, err := configDrift(e.ctx, cfg)
	if err != nil {
		return err
	}
	found = append(found, conf...)
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	for _, d := range kept {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Kind, d.What, d.Detail)
	}
	if len(found) == 0 {
		if err := tw.Flush(); err != nil {
			return err
		}
		extra := ""
		if len(kept) > 0 {
			extra = fmt.Sprintf("; %d homes kept by policy (listed above)", len(kept))
		}
		fmt.Fprintf(e.stdout, "everything agrees with the directory (%d entries): %s%s\n", len(entries), strings.Join(summary, ", "), extra)
		return nil
	}
	for _, d := range found {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Kind, d.What, d.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return checkFailed{len(found)}
}
