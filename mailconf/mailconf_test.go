package mailconf_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailsync/fault"
	"mailsync/internal/testenv"
	"mailsync/mailconf"
)

func TestInstallAtomicIdempotentAndValidated(t *testing.T) {
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	var validated []string
	p := &mailconf.Product{
		Name: "test",
		Dir:  dir,
		Files: []mailconf.File{
			{Path: filepath.Join(dir, "main.cf"), Data: []byte("a = 1\nb = 2\n"), Mode: 0o644},
			{Path: filepath.Join(dir, "sub", "x.conf"), Data: []byte("x\n"), Mode: 0o644},
			{Path: filepath.Join(dir, "smtp_auth"), Data: []byte("[relay.example.net] u:secret\n"), Mode: 0o600, Postmap: "hash"},
			{Path: filepath.Join(dir, "access.cidr"), Data: nil, Mode: 0o644, Seed: true},
		},
		Validate: func(ctx context.Context, staged string) error {
			data, err := os.ReadFile(filepath.Join(staged, "sub", "x.conf"))
			validated = append(validated, string(data))
			return err
		},
		Postmap: pf.Postmap, PostmapConfigDir: pf.ConfigDir,
	}
	changed, err := mailconf.Install(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 4 || len(validated) != 1 || validated[0] != "x\n" {
		t.Fatalf("first install: changed %v, validated %q", changed, validated)
	}
	for _, f := range []string{"smtp_auth", "smtp_auth.db"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", f, st, err)
		}
	}
	if got := pf.Query(t, "hash:"+filepath.Join(dir, "smtp_auth"), "[relay.example.net]"); got["[relay.example.net]"] != "u:secret" {
		t.Fatalf("smtp_auth lookup: %v", got)
	}
	if changed, err := mailconf.Install(context.Background(), p); err != nil || len(changed) != 0 {
		t.Fatalf("second install changed %v (%v), want nothing", changed, err)
	}
	if d, err := mailconf.Drift(p); err != nil || len(d) != 0 {
		t.Fatalf("drift after install: %v %v", d, err)
	}

	// The admin's seed stays; a hand edit is drift and a diff.
	os.WriteFile(filepath.Join(dir, "access.cidr"), []byte("10.0.0.0/8 reject\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.cf"), []byte("a = 1\nb = 3\n"), 0o644)
	d, err := mailconf.Drift(p)
	if err != nil || len(d) != 1 || d[0].Path != filepath.Join(dir, "main.cf") {
		t.Fatalf("drift: %v %v, want main.cf only", d, err)
	}
	diff, err := mailconf.Diff(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(diff, "-b = 3\n+b = 2\n") || strings.Contains(diff, "access.cidr") {
		t.Fatalf("diff:\n%s", diff)
	}

	// A set that does not validate changes nothing.
	bad := *p
	bad.Files = append([]mailconf.File(nil), p.Files...)
	bad.Files[0].Data = []byte("a = 9\n")
	bad.Validate = func(context.Context, string) error { return errors.New("no") }
	if _, err := mailconf.Install(context.Background(), &bad); err == nil || !fault.IsPermanent(err) {
		t.Fatalf("install of an invalid set: %v, want a permanent error", err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "main.cf")); string(data) != "a = 1\nb = 3\n" {
		t.Fatalf("main.cf after refused install: %q", data)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "access.cidr")); string(data) != "10.0.0.0/8 reject\n" {
		t.Fatalf("seed replaced: %q", data)
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
}

func TestFileOutsideDirRefused(t *testing.T) {
	dir := t.TempDir()
	p := &mailconf.Product{Name: "x", Dir: dir, Files: []mailconf.File{{Path: filepath.Join(dir, "..", "evil"), Mode: 0o644}}}
	if _, err := mailconf.Install(context.Background(), p); err == nil {
		t.Fatal("a file outside the config dir was accepted")
	}
}

func TestDiffHidesSecrets(t *testing.T) {
	dir := t.TempDir()
	p := &mailconf.Product{Name: "x", Dir: dir, Files: []mailconf.File{{Path: filepath.Join(dir, "smtp_auth"), Data: []byte("relay u:pw\n"), Mode: 0o600}}}
	d, err := mailconf.Diff(p)
	if err != nil || strings.Contains(d, "pw") || !strings.Contains(d, "+++ "+filepath.Join(dir, "smtp_auth")) {
		t.Fatalf("diff of a secret file:\n%s (%v)", d, err)
	}
}
