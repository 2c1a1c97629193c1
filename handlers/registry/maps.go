package registry

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"mailsync/config"
	"mailsync/event"
	"mailsync/handlers/aliases"
	"mailsync/handlers/homeserver"
	"mailsync/runner"
)

// mapHandler is a handler whose state is Postfix maps, derived from the
// whole directory: check compares the maps a full rebuild writes (tables,
// computed by the handler's own code in memory) with the files, plan
// diffs them before and after each change, and resync rebuilds them with
// the handler's Load.
func mapHandler(name string, build func(context.Context, *config.Config, Deps) (runner.Handler, error),
	tables func(*config.Config, []event.Entry) map[string][]byte) Handler {
	return Handler{
		Name:  name,
		Build: build,
		Check: func(c *config.Config, entries []event.Entry) (Checked, error) {
			var out Checked
			want := tables(c, entries)
			for _, t := range slices.Sorted(maps.Keys(want)) {
				d, n, err := checkMap(c.Postfix.MapDir, t, want[t])
				if err != nil {
					return Checked{}, err
				}
				out.Found = append(out.Found, d...)
				out.Summary = append(out.Summary, fmt.Sprintf("%s (%d keys)", t, n))
			}
			return out, nil
		},
		Plan: func(c *config.Config, dir map[string]event.Entry) (Planner, error) {
			before := tables(c, slices.Collect(maps.Values(dir)))
			return func(_ event.Event, dir map[string]event.Entry) (string, []string) {
				after := tables(c, slices.Collect(maps.Values(dir)))
				var lines []string
				for _, t := range slices.Sorted(maps.Keys(after)) {
					lines = append(lines, diffMap(t, before[t], after[t])...)
				}
				before = after
				if len(lines) == 0 {
					return "no map changes", nil
				}
				return "", lines
			}, nil
		},
		Resync: func(ctx context.Context, _ *config.Config, h runner.Handler, entries []event.Entry, o Output) error {
			l, ok := h.(runner.Loader)
			if !ok {
				return fmt.Errorf("resync %s: the handler cannot rebuild its maps", name)
			}
			t := time.Now()
			if err := l.Load(ctx, entries); err != nil {
				return fmt.Errorf("resync %s: %w", name, err)
			}
			fmt.Fprintf(o.Stdout, "%s: maps rebuilt in %s\n", name, time.Since(t).Round(time.Millisecond))
			return nil
		},
	}
}

func buildAliases(_ context.Context, c *config.Config, d Deps) (runner.Handler, error) {
	h, err := aliases.New(aliases.Config{
		Installed:        d.Installed,
		Dir:              c.Postfix.MapDir,
		MapType:          c.Postfix.MapType,
		ExpansionLimit:   c.Policy.ExpansionLimit,
		Coalesce:         c.Postfix.Coalesce,
		PostmapPath:      c.Postfix.Postmap,
		PostfixConfigDir: c.Postfix.ConfigDir,
		HostFQDN:         c.Host,
		WriteMainCFLocal: c.Postfix.WriteMainCFLocal,
		MainCFLocal:      c.Postfix.MainCFLocal,
	}, d.Log.With().Str("handler", aliases.Name).Logger())
	if err != nil {
		return nil, fmt.Errorf("start %s handler: %w", aliases.Name, err)
	}
	return h, nil
}

func aliasMaps(c *config.Config, entries []event.Entry) map[string][]byte {
	return aliases.Tables(c.Host, c.Policy.ExpansionLimit, entries)
}

func buildHomeserver(_ context.Context, c *config.Config, d Deps) (runner.Handler, error) {
	h, err := homeserver.New(homeserver.Config{
		Installed:        d.Installed,
		Host:             c.Host,
		Dir:              c.Postfix.MapDir,
		MapType:          c.Postfix.MapType,
		PostmapPath:      c.Postfix.Postmap,
		PostfixConfigDir: c.Postfix.ConfigDir,
		Coalesce:         c.Postfix.Coalesce,
	})
	if err != nil {
		return nil, fmt.Errorf("start %s handler: %w", homeserver.Name, err)
	}
	return h, nil
}

func transportMap(c *config.Config, entries []event.Entry) map[string][]byte {
	return map[string][]byte{homeserver.TransportMap: homeserver.Table(c.Host, entries)}
}

// checkMap compares the source text file of map name in dir (the file
// postmap built the database from) with the expected source, key by key.
// It returns the disagreements and the number of expected keys.
func checkMap(dir, name string, want []byte) ([]Disagreement, int, error) {
	wantKV, err := parseMap(bytes.NewReader(want))
	if err != nil {
		return nil, 0, fmt.Errorf("parse expected %s: %w", name, err)
	}
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return []Disagreement{{"missing map", path, fmt.Sprintf("%d entries expected", len(wantKV))}}, len(wantKV), nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read map %s: %w", path, err)
	}
	defer f.Close()
	haveKV, err := parseMap(f)
	if err != nil {
		return nil, 0, fmt.Errorf("read map %s: %w", path, err)
	}
	var found []Disagreement
	for _, k := range slices.Sorted(maps.Keys(haveKV)) {
		w, ok := wantKV[k]
		switch {
		case !ok:
			found = append(found, Disagreement{"stale map entry", name + ": " + k, "has " + haveKV[k] + ", the directory gives no entry"})
		case w != haveKV[k]:
			found = append(found, Disagreement{"wrong map entry", name + ": " + k, "has " + haveKV[k] + ", want " + w})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(wantKV)) {
		if _, ok := haveKV[k]; !ok {
			found = append(found, Disagreement{"missing map entry", name + ": " + k, "want " + wantKV[k]})
		}
	}
	return found, len(wantKV), nil
}

// diffMap lists the keys of table that change from before to after.
func diffMap(table string, before, after []byte) []string {
	b, _ := parseMap(bytes.NewReader(before))
	a, _ := parseMap(bytes.NewReader(after))
	var out []string
	for _, k := range slices.Sorted(maps.Keys(b)) {
		v, ok := a[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: - %s (was %s)", table, k, b[k]))
		case v != b[k]:
			out = append(out, fmt.Sprintf("%s: ~ %s %s -> %s", table, k, b[k], v))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(a)) {
		if _, ok := b[k]; !ok {
			out = append(out, fmt.Sprintf("%s: + %s %s", table, k, a[k]))
		}
	}
	return out
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
