package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"mailsync/config"
	"mailsync/event"
	"mailsync/handlers/aliases"
	"mailsync/handlers/homeserver"
	"mailsync/handlers/mailbox"
	"mailsync/identity"
)

type checkCmd struct{}

// disagreement is one thing check found out of step.
type disagreement struct {
	kind   string // "orphaned mailbox", "missing mailbox", ...
	what   string // a path, an address, a map key
	detail string
}

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
	var found, kept []disagreement
	var summary []string
	if cfg.Wants("mailbox") {
		d, k, n, err := checkHomes(cfg, entries)
		if err != nil {
			return err
		}
		found = append(found, d...)
		kept = k
		summary = append(summary, fmt.Sprintf("%d mailboxes", n))
	}
	maps := expectedMaps(cfg, entries)
	for _, name := range sortedNames(maps) {
		d, n, err := checkMap(cfg.Postfix.MapDir, name, maps[name])
		if err != nil {
			return err
		}
		found = append(found, d...)
		summary = append(summary, fmt.Sprintf("%s (%d keys)", name, n))
	}
	conf, err := configDrift(e.ctx, cfg)
	if err != nil {
		return err
	}
	found = append(found, conf...)
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	for _, d := range kept {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.kind, d.what, d.detail)
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
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.kind, d.what, d.detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return checkFailed{len(found)}
}

// homeOwner is the responsible user a home belongs to.
type homeOwner struct {
	entry   event.Entry
	address string
}

// homes is what the directory says this host's spool should hold.
type homes struct {
	layout mailbox.Layout
	homes  map[string]homeOwner // path -> owner
	// invalid are responsible users whose address cannot name a home.
	invalid []disagreement
}

// expectedHomes lists the home of every user this host is responsible for
// (package homeserver's rule) and who has a primary address: the homes
// the mailbox handler creates.
func expectedHomes(mailHome, host string, entries []event.Entry) (homes, error) {
	l, err := mailbox.NewLayout(mailHome)
	if err != nil {
		return homes{}, usageError{fmt.Errorf("dovecot.mail_home: %w", err)}
	}
	h := homes{layout: l, homes: map[string]homeOwner{}}
	for _, e := range entries {
		if e.Kind != event.KindUser || !identity.Responsible(e.Attrs.First(event.AttrHomeServer), host) {
			continue
		}
		addr := e.Attrs.FirstLower(event.AttrPrimaryAddress)
		if addr == "" {
			continue
		}
		p, err := homePath(l, addr)
		if err != nil {
			h.invalid = append(h.invalid, disagreement{"unusable address", addr, fmt.Sprintf("%s: %v", e.DN, err)})
			continue
		}
		if prev, dup := h.homes[p]; dup {
			h.invalid = append(h.invalid, disagreement{"address used twice", addr, fmt.Sprintf("%s and %s", prev.entry.DN, e.DN)})
			continue
		}
		h.homes[p] = homeOwner{entry: e, address: addr}
	}
	return h, nil
}

// homePath is the home of a lowercased address, validated as the mailbox
// handler does.
func homePath(l mailbox.Layout, addr string) (string, error) {
	local, domain, err := mailbox.ValidateAddress(addr)
	if err != nil {
		return "", err
	}
	return l.Path(local, domain)
}

// mailboxSettings are the mailbox handler's plan settings from the config.
func mailboxSettings(cfg *config.Config) (mailbox.Settings, error) {
	l, err := mailbox.NewLayout(cfg.Dovecot.MailHome)
	if err != nil {
		return mailbox.Settings{}, usageError{fmt.Errorf("dovecot.mail_home: %w", err)}
	}
	return mailbox.Settings{Host: cfg.Host, Rename: cfg.Policy.Rename, Delete: cfg.Policy.Delete,
		MoveOnHomeChange: cfg.Policy.MoveOnHomeChange, Layout: l}, nil
}

// checkHomes asks the mailbox handler's own plan (mailbox.PlanFor) what it
// would still do for each user, and for each entry owning a home, if the
// host had applied the directory as it is now: every step left is a
// disagreement, and the homes the plan keeps by policy (delete=no, an
// address given up) are reported apart, not counted. Homes without an
// owner marker that no user's address names are orphans.
func checkHomes(cfg *config.Config, entries []event.Entry) (found, kept []disagreement, n int, err error) {
	s, err := mailboxSettings(cfg)
	if err != nil {
		return nil, nil, 0, err
	}
	spool, err := mailbox.ReadSpool(s.Layout)
	if err != nil {
		return nil, nil, 0, err
	}
	users := map[string]*mailbox.State{}
	var order []string
	for _, e := range entries {
		if st, ok := mailbox.StateOf(e); ok {
			users[e.UUID] = &st
			order = append(order, e.UUID)
		}
	}
	for _, u := range spool.Owners() {
		if _, ok := users[u]; !ok {
			order = append(order, u)
		}
	}
	other := func(u string) (*mailbox.State, bool, error) { return users[u], true, nil }
	named := map[string]bool{}
	for _, u := range order {
		cur := users[u]
		in, err := spool.Input(cfg.Host, u, cur, cur, other)
		if err != nil {
			return nil, nil, 0, err
		}
		p := mailbox.PlanFor(in, s)
		if cur != nil && cur.Address != "" && identity.Responsible(cur.HomeServer, cfg.Host) {
			n++
			if hp, err := homePath(s.Layout, cur.Address); err == nil {
				named[hp] = true
			}
		}
		if p.Refused != nil {
			what := u
			if cur != nil {
				what = cur.Address
			}
			found = append(found, disagreement{"refused address", what, p.Refused.Error()})
		}
		for _, st := range p.Steps {
			switch st.Kind {
			case mailbox.StepCreate:
				found = append(found, disagreement{"missing mailbox", st.Address, fmt.Sprintf("%s has no home %s", cur.DN, st.Path)})
			case mailbox.StepMove:
				found = append(found, disagreement{"misplaced mailbox", st.FromPath, fmt.Sprintf("%s has the address %s now: %s", cur.DN, st.Address, st)})
			case mailbox.StepAttic:
				found = append(found, disagreement{"foreign mailbox", st.Path, fmt.Sprintf("%s has the address, the home was made for %s (%s)",
					cur.DN, st.Home.Owner.DN, st.Home.Owner.Address)})
			case mailbox.StepTrash:
				found = append(found, disagreement{"undeleted mailbox", st.Path, fmt.Sprintf("made for %s (%s), which no longer has it here; %s=yes",
					st.Home.Owner.DN, st.Home.Owner.Address, config.KeyDelete)})
			default:
				found = append(found, disagreement{"pending mailbox step", st.Path, st.String()})
			}
		}
		for _, h := range p.Kept {
			why := "its entry is gone"
			if cur != nil {
				why = fmt.Sprintf("%s has %q now", cur.DN, cur.Address)
			}
			kept = append(kept, disagreement{"kept by policy", h.Path, fmt.Sprintf("made for %s (%s); %s; %s=no",
				h.Owner.DN, h.Owner.Address, why, config.KeyDelete)})
		}
	}
	for _, p := range spool.Unmarked() {
		if !named[p] {
			found = append(found, disagreement{"orphaned mailbox", p, "no user this host is responsible for has this address, and it has no owner marker"})
		}
	}
	return found, kept, n, nil
}

// expectedMaps is every map source a full rebuild from entries writes for
// the handlers this host runs, keyed by file name in postfix.map_dir:
// computed by the handlers' own code, in memory.
func expectedMaps(cfg *config.Config, entries []event.Entry) map[string][]byte {
	out := map[string][]byte{}
	if cfg.Wants("aliases") {
		for name, src := range aliases.Tables(cfg.Host, cfg.Policy.ExpansionLimit, entries) {
			out[name] = src
		}
	}
	if cfg.Wants("homeserver") {
		out[homeserver.TransportMap] = homeserver.Table(cfg.Host, entries)
	}
	return out
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkMap compares the source text file of map name in dir (the file
// postmap built the database from) with the expected source, key by key.
// It returns the disagreements and the number of expected keys.
func checkMap(dir, name string, want []byte) ([]disagreement, int, error) {
	wantKV, err := parseMap(bytes.NewReader(want))
	if err != nil {
		return nil, 0, fmt.Errorf("parse expected %s: %w", name, err)
	}
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return []disagreement{{"missing map", path, fmt.Sprintf("%d entries expected", len(wantKV))}}, len(wantKV), nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read map %s: %w", path, err)
	}
	defer f.Close()
	haveKV, err := parseMap(f)
	if err != nil {
		return nil, 0, fmt.Errorf("read map %s: %w", path, err)
	}
	var found []disagreement
	for _, k := range sortedNames(haveKV) {
		w, ok := wantKV[k]
		switch {
		case !ok:
			found = append(found, disagreement{"stale map entry", name + ": " + k, "has " + haveKV[k] + ", the directory gives no entry"})
		case w != haveKV[k]:
			found = append(found, disagreement{"wrong map entry", name + ": " + k, "has " + haveKV[k] + ", want " + w})
		}
	}
	for _, k := range sortedNames(wantKV) {
		if _, ok := haveKV[k]; !ok {
			found = append(found, disagreement{"missing map entry", name + ": " + k, "want " + wantKV[k]})
		}
	}
	return found, len(wantKV), nil
}

// parseMap reads a Postfix table source: "key value" lines, comments and
// blank lines skipped, a line starting with white space continuing the
// previous one (postmap(1)).
func parseMap(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var last string
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				out[last] += " " + trimmed
			}
			continue
		}
		k, v := trimmed, ""
		if i := strings.IndexAny(trimmed, " \t"); i >= 0 {
			k, v = trimmed[:i], trimmed[i+1:]
		}
		out[k] = strings.TrimSpace(v)
		last = k
	}
	return out, sc.Err()
}
