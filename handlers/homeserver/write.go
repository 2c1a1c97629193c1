package homeserver

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// installMap writes one table atomically: source to a temp file in the
// target dir, postmap next to it, fsync both, rename the database then the
// source over the live files, fsync the dir.
//
// TODO: this is a minimal copy of handlers/aliases' writer
// ((*aliases.Handler).install in handlers/aliases/write.go); use that one
// once it is moved into a package both handlers can import.
func installMap(cfg Config, name string, src []byte) error {
	dir, suffix := cfg.Dir, mapSuffix[cfg.MapType]
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	cleanup := func() { os.Remove(tmp); os.Remove(tmp + suffix) }
	if _, err = f.Write(src); err == nil {
		if err = f.Chmod(0o644); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		cleanup()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	var args []string
	if cfg.PostfixConfigDir != "" {
		args = append(args, "-c", cfg.PostfixConfigDir)
	}
	args = append(args, cfg.MapType+":"+tmp)
	var stderr bytes.Buffer
	cmd := exec.Command(cfg.PostmapPath, args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		cleanup()
		return fmt.Errorf("postmap %s:%s: %w: %s", cfg.MapType, tmp, err, strings.TrimSpace(stderr.String()))
	}
	if err := fsyncPath(tmp + suffix); err != nil {
		cleanup()
		return fmt.Errorf("fsync %s: %w", tmp+suffix, err)
	}
	live := filepath.Join(dir, name)
	if err := os.Rename(tmp+suffix, live+suffix); err != nil {
		cleanup()
		return fmt.Errorf("rename %s -> %s: %w", tmp+suffix, live+suffix, err)
	}
	if err := os.Rename(tmp, live); err != nil {
		cleanup()
		return fmt.Errorf("rename %s -> %s: %w", tmp, live, err)
	}
	if err := fsyncPath(dir); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func fsyncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
