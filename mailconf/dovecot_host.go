package mailconf

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"mailsync/config"
	"mailsync/fault"
)

// DovecotHost is the installed Dovecot the fragments are rendered for:
// Probe reads what RenderDovecot must know, the products' Validate runs
// doveconf over the configuration as it would be with the new fragments,
// Reload tells a running Dovecot to read them.
type DovecotHost struct {
	Target DovecotTarget
	// Binaries; empty: found in PATH (dovecot, doveconf, doveadm).
	Dovecot, Doveconf, Doveadm string
}

// HostFor is the local Dovecot as the config describes it: the fragments
// describe the same mail_home, index_home and public home the mailbox
// handler computes paths from.
func HostFor(cfg *config.Config) *DovecotHost {
	return &DovecotHost{Target: DovecotTarget{
		ConfDir:    cfg.Dovecot.ConfDir,
		MailHome:   cfg.Dovecot.MailHome,
		IndexHome:  cfg.Dovecot.IndexHome,
		UnitDropIn: cfg.Dovecot.UnitDropIn,
		PublicHome: cfg.Dovecot.PublicHome,
	}}
}

func (h *DovecotHost) bin(set, name string) string {
	if set != "" {
		return set
	}
	return name
}

func (h *DovecotHost) conf(dir string) string { return filepath.Join(dir, "dovecot.conf") }

// Products probes the installed Dovecot and renders its products:
// "dovecot", the fragments under Target.ConfDir (validated by doveconf,
// installed with a reload), and, with Target.UnitDropIn, "dovecot-unit",
// the systemd drop-in with the fd limit, which only a restart applies.
func (h *DovecotHost) Products(ctx context.Context, s Settings) (conf, unit *Product, err error) {
	f, err := h.Probe(ctx)
	if err != nil {
		return nil, nil, err
	}
	files, err := RenderDovecot(s, h.Target, f)
	if err != nil {
		return nil, nil, err
	}
	conf = &Product{Name: "dovecot", Dir: h.Target.ConfDir, Validate: h.validate,
		Reload: func(ctx context.Context) error { _, err := h.Reload(ctx); return err }}
	for _, file := range files {
		if file.Path == h.Target.UnitDropIn {
			unit = &Product{Name: "dovecot-unit", Dir: filepath.Dir(file.Path), Files: []File{file}}
			continue
		}
		conf.Files = append(conf.Files, file)
	}
	// A reload re-reads the limits, but the master keeps its fd limit and
	// its listeners the backlog they were opened with (process_limit ×
	// client_limit at the start): raised limits fully apply at a restart.
	if d, _ := Drift(conf); limitsDrift(d) {
		conf.Warnings = append(conf.Warnings, "limits changed: listen backlogs and the fd limit apply when Dovecot restarts (a reload keeps them)")
	}
	if unit != nil {
		if d, _ := Drift(unit); len(d) > 0 {
			unit.Warnings = append(unit.Warnings, "fd limit changed: run `systemctl daemon-reload` and restart Dovecot (manual 14.7.12)")
		}
	}
	return conf, unit, nil
}

func limitsDrift(d []Drifted) bool {
	for _, x := range d {
		if filepath.Base(x.Path) == DovecotLimitsFile {
			return true
		}
	}
	return false
}

// Probe reads the Dovecot version and, from a copy of the configuration
// without mailsync's fragments, the enabled protocols and every service's
// limits (`doveconf -a`, defaults included): the numbers Dovecot's own
// load check adds up.
func (h *DovecotHost) Probe(ctx context.Context) (DovecotFacts, error) {
	var f DovecotFacts
	out, err := run(ctx, h.bin(h.Dovecot, "dovecot"), "--version")
	if err != nil {
		return f, err
	}
	f.Version, _, _ = strings.Cut(strings.TrimSpace(out), " ")

	dir, err := h.overlay(nil)
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(dir)
	out, err = run(ctx, h.bin(h.Doveconf, "doveconf"), "-c", h.conf(dir), "-a")
	if err != nil {
		return f, err
	}
	f.Protocols, f.Services = parseDoveconf(out)
	return f, nil
}

// parseDoveconf reads the protocols setting and the service sections of
// `doveconf -a` output.
func parseDoveconf(out string) ([]string, []DovecotService) {
	var protocols []string
	var services []DovecotService
	var cur *DovecotService
	depth := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasSuffix(line, "{"):
			if depth == 0 && strings.HasPrefix(line, "service ") {
				services = append(services, DovecotService{Name: strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(line, "service "), "{"))})
				cur = &services[len(services)-1]
			}
			depth++
			continue
		case line == "}":
			depth--
			if depth == 0 {
				cur = nil
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if depth == 0 && k == "protocols" {
			protocols = strings.Fields(v)
		}
		if depth != 1 || cur == nil {
			continue
		}
		n, _ := strconv.Atoi(v)
		switch k {
		case "type":
			cur.Type = v
		case "protocol":
			cur.Protocol = v
		case "process_limit":
			cur.ProcessLimit = n
		case "client_limit":
			cur.ClientLimit = n
		case "service_count":
			cur.ServiceCount = n
		}
	}
	sort.Slice(services, func(i, j int) bool { return services[i].Name < services[j].Name })
	return protocols, services
}

// validate runs `doveconf -n` over a copy of the installed configuration
// with the files staged in staged put in place, so a fragment Dovecot would
// refuse is never installed. A "lower than required under max. load"
// warning is an error too: the computed limits must keep Dovecot quiet.
func (h *DovecotHost) validate(ctx context.Context, staged string) error {
	var files []File
	err := filepath.WalkDir(staged, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(staged, p)
		files = append(files, File{Path: filepath.Join(h.Target.ConfDir, rel), Data: data})
		return err
	})
	if err != nil {
		return fault.Retryable(fmt.Errorf("read staged dovecot configuration: %w", err))
	}
	dir, err := h.overlay(files)
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cmd := exec.CommandContext(ctx, h.bin(h.Doveconf, "doveconf"), "-c", h.conf(dir), "-n")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = nil, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) || ctx.Err() != nil {
			return fault.Retryable(fmt.Errorf("doveconf: %w", err))
		}
		return fault.Permanentf("doveconf -n refuses the rendered configuration: %s", strings.TrimSpace(stderr.String()))
	}
	var warn []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "lower than required") {
			warn = append(warn, strings.TrimSpace(l))
		}
	}
	if len(warn) > 0 {
		return fault.Permanentf("doveconf warns about the rendered limits: %s", strings.Join(warn, "; "))
	}
	return nil
}

// Reload makes a running Dovecot read its configuration (`doveadm
// reload`); it reports false, doing nothing, when Dovecot is not running.
// The fd limit is not changed by a reload: it needs a restart (manual
// 14.7.12).
func (h *DovecotHost) Reload(ctx context.Context) (bool, error) {
	conf := h.conf(h.Target.ConfDir)
	base, err := run(ctx, h.bin(h.Doveconf, "doveconf"), "-c", conf, "-h", "base_dir")
	if err != nil {
		return false, err
	}
	pidText, err := os.ReadFile(filepath.Join(strings.TrimSpace(base), "master.pid"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fault.Retryable(fmt.Errorf("dovecot master pid: %w", err))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false, nil // a stale pid file: not running
	}
	if _, err := run(ctx, h.bin(h.Doveadm, "doveadm"), "-c", conf, "reload"); err != nil {
		return false, err
	}
	return true, nil
}

// PublicProduct is the "dovecot-public" product: the public namespaces of
// the shared folders without an address homed here (RenderDovecotPublic
// under Target.PublicHome). Install validates it with doveconf together
// with the installed configuration, replaces the fragment atomically and
// reloads a running Dovecot only when the folders changed, so it can be
// installed after every change of the set.
func (h *DovecotHost) PublicProduct(folders []string) (*Product, error) {
	files, err := renderDovecotPublic(h.Target.ConfDir, h.Target.PublicHome, folders)
	if err != nil {
		return nil, err
	}
	return &Product{Name: "dovecot-public", Dir: h.Target.ConfDir, Files: files, Validate: h.validate,
		Reload: func(ctx context.Context) error { _, err := h.Reload(ctx); return err }}, nil
}

// InstallPublic installs the public namespaces of folders (PublicProduct)
// and reloads a running Dovecot when they changed: what the mailbox
// handler calls when the set of public folders homed here changes.
func (h *DovecotHost) InstallPublic(ctx context.Context, folders []string) error {
	p, err := h.PublicProduct(folders)
	if err != nil {
		return err
	}
	_, err = Install(ctx, p)
	return err
}

// overlay copies the configuration directory to a temp dir and puts files
// (those under Target.ConfDir) in place. With files nil, mailsync's own
// fragments are left out: the configuration as the administrator has it.
// Relative includes (conf.d/*.conf) resolve inside the copy; absolute
// paths still name the installed files, which doveconf only reads.
func (h *DovecotHost) overlay(files []File) (string, error) {
	src := h.Target.ConfDir
	dst, err := os.MkdirTemp("", "mailsync-dovecot-")
	if err != nil {
		return "", fault.Retryable(err)
	}
	ours := map[string]bool{
		filepath.Join(src, "conf.d", DovecotMailFile):   true,
		filepath.Join(src, "conf.d", DovecotLimitsFile): true,
	}
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o700)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case !d.Type().IsRegular() || ours[p]:
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, data, 0o600)
	})
	for _, f := range files {
		if err != nil {
			break
		}
		rel, rerr := filepath.Rel(src, f.Path)
		if rerr != nil || strings.HasPrefix(rel, "..") {
			continue // not Dovecot's (the systemd drop-in)
		}
		to := filepath.Join(dst, rel)
		if err = os.MkdirAll(filepath.Dir(to), 0o700); err == nil {
			err = os.WriteFile(to, f.Data, 0o600)
		}
	}
	if err != nil {
		os.RemoveAll(dst)
		return "", fault.Retryable(fmt.Errorf("copy dovecot configuration %s: %w", src, err))
	}
	return dst, nil
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fault.Retryable(fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String())))
	}
	return stdout.String(), nil
}
