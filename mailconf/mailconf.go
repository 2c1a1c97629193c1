// Package mailconf renders the mail servers' own configuration (Postfix's
// main.cf and master.cf, Dovecot's conf files) from the same UCR-named
// settings as the rest of mailsync (manual 14.7.1–14.7.12), and installs it
// safely.
//
// What it guarantees: a rendered set is validated by the server's own
// checker on a staged copy before any live file is touched, so a bad
// setting changes nothing; each file is then replaced atomically (a temp
// file in the same directory, fsynced, renamed, the directory fsynced), so
// a server never reads half a file; and a file whose content and mode are
// already right is not rewritten, so installing twice changes nothing the
// second time. Setting errors name the UCR variable (SettingError).
package mailconf

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"mailsync/atomicfile"
	"mailsync/fault"
)

// File is one rendered config file.
type File struct {
	Path string // absolute, under the product's Dir
	Data []byte
	Mode fs.FileMode
	// Seed marks a file the administrator owns once it exists (an empty
	// access list the config refers to): written only when absent, never
	// replaced, never reported as drift.
	Seed bool
	// Postmap, when set, is the lookup table type (hash, lmdb, cdb) the
	// file is the source of: its database is built next to it with the
	// same mode (smtp_auth keeps its credentials 0600 in both).
	Postmap string
}

// Settings are the UCR-named values (config policy: merged with ucr_file),
// as config.Config.Policy holds them.
type Settings map[string]string

// Get returns the setting key, or def when it is unset or empty.
func (s Settings) Get(key, def string) string {
	if v := strings.TrimSpace(s[key]); v != "" {
		return v
	}
	return def
}

// Bool reads a UCR truth value (univention.config_registry's is_true);
// anything else is a SettingError.
func (s Settings) Bool(key string, def bool) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s[key])) {
	case "":
		return def, nil
	case "yes", "true", "1", "enable", "enabled", "on":
		return true, nil
	case "no", "false", "0", "disable", "disabled", "off":
		return false, nil
	}
	return false, &SettingError{Key: key, Value: s[key], Reason: "want yes or no"}
}

// SettingError is a setting that cannot be rendered: only a change of the
// setting can help, so callers treat it as a configuration error (exit 2).
type SettingError struct {
	Key    string // the UCR variable, e.g. mail/relayhost
	Value  string
	Reason string
}

func (e *SettingError) Error() string {
	return fmt.Sprintf("%s: %s, got %q", e.Key, e.Reason, e.Value)
}

// Product is one server's rendered configuration and how to check and
// reload it.
type Product struct {
	Name string // "postfix", "dovecot"
	// Dir is the config directory every file lies under; the staged copy
	// keeps the files' paths relative to it.
	Dir   string
	Files []File
	// Warnings are things worth saying that do not stop the install (a
	// parameter set twice, naming both places).
	Warnings []string
	// Validate checks the set staged in dir with the server's own checker
	// (postfix -c dir check, doveconf -c dir/dovecot.conf -n).
	Validate func(ctx context.Context, dir string) error
	// Reload makes a running server read its new configuration; it does
	// nothing when the server is not running. Nil: nothing to reload.
	Reload func(ctx context.Context) error
	// Postmap is the postmap binary for files with Postmap set, and
	// PostmapConfigDir its -c (empty: postmap's own).
	Postmap, PostmapConfigDir string
}

func (p *Product) rel(f File) (string, error) {
	rel, err := filepath.Rel(p.Dir, f.Path)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") || filepath.IsAbs(rel) {
		return "", fault.Permanentf("%s: file %s is outside its config dir %s", p.Name, f.Path, p.Dir)
	}
	return rel, nil
}

// Stage writes the set into a fresh temp dir, with the same layout under it
// as under Dir, and returns the dir; the caller removes it.
func (p *Product) Stage() (string, error) {
	dir, err := os.MkdirTemp("", "mailconf-"+p.Name+"-")
	if err != nil {
		return "", fmt.Errorf("stage %s config: %w", p.Name, err)
	}
	for _, f := range p.Files {
		rel, err := p.rel(f)
		if err != nil {
			os.RemoveAll(dir)
			return "", err
		}
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("stage %s: %w", rel, err)
		}
		if err := os.WriteFile(path, f.Data, f.Mode.Perm()); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("stage %s: %w", rel, err)
		}
		backdate(path)
	}
	return dir, nil
}

// Install validates the rendered set on a staged copy, then writes each file
// that differs from what is installed atomically, and reloads the server
// when anything changed. It returns the paths it wrote. A validation error
// writes nothing.
func Install(ctx context.Context, p *Product) (changed []string, err error) {
	if err := Check(ctx, p); err != nil {
		return nil, err
	}
	for _, f := range p.Files {
		same, err := installed(f)
		if err != nil {
			return changed, err
		}
		if same {
			continue
		}
		if err := p.write(ctx, f); err != nil {
			return changed, err
		}
		changed = append(changed, f.Path)
	}
	if len(changed) > 0 && p.Reload != nil {
		if err := p.Reload(ctx); err != nil {
			return changed, fmt.Errorf("reload %s: %w", p.Name, err)
		}
	}
	return changed, nil
}

// Check validates the set on a staged copy, changing nothing live.
func Check(ctx context.Context, p *Product) error {
	for _, f := range p.Files {
		if _, err := p.rel(f); err != nil {
			return err
		}
	}
	if p.Validate == nil {
		return nil
	}
	dir, err := p.Stage()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := p.Validate(ctx, dir); err != nil {
		return fault.Permanent(fmt.Errorf("%s config does not validate: %w", p.Name, err))
	}
	return nil
}

// installed reports whether f is on disk as rendered (a seed: at all).
func installed(f File) (bool, error) {
	st, err := os.Stat(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", f.Path, err)
	}
	if f.Seed {
		return true, nil
	}
	if st.Mode().Perm() != f.Mode.Perm() {
		return false, nil
	}
	have, err := os.ReadFile(f.Path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", f.Path, err)
	}
	if string(have) != string(f.Data) {
		return false, nil
	}
	if f.Postmap != "" {
		db, err := os.Stat(f.Path + dbSuffix(f.Postmap))
		if err != nil || db.ModTime().Before(st.ModTime()) || db.Mode().Perm() != f.Mode.Perm() {
			return false, nil
		}
	}
	return true, nil
}

func dbSuffix(typ string) string {
	switch typ {
	case "lmdb":
		return ".lmdb"
	case "cdb":
		return ".cdb"
	}
	return ".db"
}

// write replaces f.Path atomically (atomicfile): a map's database is built
// from the complete temp file and renamed into place first, so the source
// is never newer than a database built from something else; a plain file
// is backdated before its rename.
func (p *Product) write(ctx context.Context, f File) error {
	dir := filepath.Dir(f.Path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	before := func(tmp string) error { backdate(tmp); return nil }
	if f.Postmap != "" {
		before = func(tmp string) error {
			suffix := dbSuffix(f.Postmap)
			defer os.Remove(tmp + suffix)
			if err := p.postmap(ctx, f.Postmap, tmp); err != nil {
				return err
			}
			if err := syncChmod(tmp+suffix, f.Mode.Perm()); err != nil {
				return err
			}
			if err := os.Rename(tmp+suffix, f.Path+suffix); err != nil {
				return fmt.Errorf("install %s: %w", f.Path+suffix, err)
			}
			return nil
		}
	}
	if err := atomicfile.WriteThen(f.Path, f.Data, f.Mode.Perm(), before); err != nil {
		return fmt.Errorf("write %s: %w", f.Path, err)
	}
	return nil
}

// backdate dates a complete config file two seconds back. Postfix reads a
// config file only once it is more than a second old (it might be half
// edited, dict_load_file), polling every 300 ms; a file renamed into place
// is complete, and a reload right after the install would wait for nothing.
func backdate(path string) {
	t := time.Now().Add(-2 * time.Second)
	_ = os.Chtimes(path, t, t)
}

func syncChmod(path string, mode fs.FileMode) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	if err := fh.Chmod(mode); err != nil {
		return err
	}
	return fh.Sync()
}

// Drifted is one installed file that is not what the settings render.
type Drifted struct {
	Path   string
	Reason string // "missing", "differs (N lines)", "mode 0644, want 0600"
}

// Drift compares the rendered set with what is installed. Seeds count only
// when absent.
func Drift(p *Product) ([]Drifted, error) {
	var out []Drifted
	for _, f := range p.Files {
		st, err := os.Stat(f.Path)
		if errors.Is(err, fs.ErrNotExist) {
			out = append(out, Drifted{f.Path, "missing"})
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", f.Path, err)
		}
		if f.Seed {
			continue
		}
		have, err := os.ReadFile(f.Path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Path, err)
		}
		if string(have) != string(f.Data) {
			n := 0
			for _, l := range diffLines(splitLines(string(have)), splitLines(string(f.Data))) {
				if l.op != ' ' {
					n++
				}
			}
			out = append(out, Drifted{f.Path, fmt.Sprintf("differs from the rendered config (%d lines)", n)})
		}
		if st.Mode().Perm() != f.Mode.Perm() {
			out = append(out, Drifted{f.Path, fmt.Sprintf("mode %04o, want %04o", st.Mode().Perm(), f.Mode.Perm())})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}
