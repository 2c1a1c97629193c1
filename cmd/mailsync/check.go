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
	var found []disagreement
	var summary []string
	if cfg.Wants("mailbox") {
		exp, err := expectedHomes(cfg.Dovecot.MailHome, cfg.Host, entries)
		if err != nil {
			return err
		}
		d, err := checkHomes(cfg, exp)
		if err != nil {
			return err
		}
		found = append(found, d...)
		summary = append(summary, fmt.Sprintf("%d mailboxes", len(exp.homes)))
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
	if len(found) == 0 {
		fmt.Fprintf(e.stdout, "everything agrees with the directory (%d entries): %s\n", len(entries), strings.Join(summary, ", "))
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
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
		if e.Kind != event.KindUser || !homeserver.Responsible(e.Attrs.First(event.AttrHomeServer), host) {
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

// checkHomes finds the expected homes that do not exist (missing) and the
// homes on disk that no responsible user owns (orphaned), plus homes whose
// marker names another entry than the user whose address they carry.
func checkHomes(cfg *config.Config, exp homes) ([]disagreement, error) {
	found := append([]disagreement(nil), exp.invalid...)
	onDisk, err := existingHomes(exp.layout)
	if err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(onDisk))
	for _, p := range onDisk {
		have[p] = true
		o, ok := exp.homes[p]
		if !ok {
			detail := "no user this host is responsible for has this address"
			if m, ok := mailbox.ReadOwner(p); ok {
				detail += fmt.Sprintf("; made for %s (%s)", m.DN, m.Address)
			}
			if !cfg.Bool(config.KeyDelete) {
				detail += "; kept by " + config.KeyDelete + "=no?"
			}
			found = append(found, disagreement{"orphaned mailbox", p, detail})
			continue
		}
		if m, ok := mailbox.ReadOwner(p); ok && m.UUID != o.entry.UUID {
			found = append(found, disagreement{"foreign mailbox", p,
				fmt.Sprintf("%s has the address, the home was made for %s (%s)", o.entry.DN, m.DN, m.Address)})
		}
	}
	var missing []string
	for p := range exp.homes {
		if !have[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(missing)
	for _, p := range missing {
		o := exp.homes[p]
		found = append(found, disagreement{"missing mailbox", o.address, fmt.Sprintf("%s has no home %s", o.entry.DN, p)})
	}
	return found, nil
}

// existingHomes lists the directories on disk the mail_home template can
// name, skipping mailsync's own (.mailsync-trash, staging copies) and any
// other dot directory, which no valid address produces.
func existingHomes(l mailbox.Layout) ([]string, error) {
	matches, err := filepath.Glob(homeGlob(l.Template))
	if err != nil {
		return nil, fmt.Errorf("list homes under %s: %w", l.Root, err)
	}
	var out []string
	for _, p := range matches {
		rel, err := filepath.Rel(l.Root, p)
		if err != nil || hasDotComponent(rel) {
			continue
		}
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}

// homeGlob turns a mail_home template into a glob: each variable becomes
// "*", the fixed text is escaped.
func homeGlob(template string) string {
	var b strings.Builder
	for i := 0; i < len(template); i++ {
		c := template[i]
		if c != '%' {
			if strings.IndexByte(`*?[\`, c) >= 0 {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
			continue
		}
		rest := template[i+1:]
		switch {
		case strings.HasPrefix(rest, "%"):
			b.WriteByte('%')
			i++
		case strings.HasPrefix(rest, "L") && len(rest) > 1:
			b.WriteByte('*')
			i += 2
		default:
			b.WriteByte('*')
			i++
		}
	}
	return b.String()
}

func hasDotComponent(rel string) bool {
	for _, c := range strings.Split(rel, string(filepath.Separator)) {
		if strings.HasPrefix(c, ".") {
			return true
		}
	}
	return false
}

// expectedMaps is every map source a full rebuild from entries writes for
// the handlers this host runs, keyed by file name in postfix.map_dir:
// computed by the handlers' own code, in memory.
func expectedMaps(cfg *config.Config, entries []event.Entry) map[string][]byte {
	out := map[string][]byte{}
	if cfg.Wants("aliases") {
		for name, src := range aliases.Tables(cfg.Host, cfg.Int(config.KeyExpansionLimit), entries) {
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
