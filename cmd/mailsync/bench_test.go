package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mailsync/config"
)

// BenchmarkResync100k times `mailsync resync` of the maps for a directory
// of 100,000 users in 100 groups, read from slapd, and reports beside it the
// baseline of the same run: reading the directory alone. Mailbox creation
// is not included: it is Dovecot's time (doveadm), a few per second on CI.
// Run: go test -run '^$' -bench Resync100k -benchtime 1x ./cmd/mailsync/
func BenchmarkResync100k(b *testing.B) {
	const users = 100000
	_, cfgPath, dir, _ := bigDirectory(b, users)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	entries, err := readDirectory(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	read := time.Since(t0)
	if len(entries) < users {
		b.Fatalf("read %d entries, want %d", len(entries), users)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		os.RemoveAll(filepath.Join(dir, "maps"))
		if out, stderr, code := verb(b, cfgPath, "resync"); code != 0 {
			b.Fatalf("resync exit %d\n%s%s", code, out, stderr)
		}
	}
	b.StopTimer()
	perOp := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(perOp.Seconds(), "resync_s")
	b.ReportMetric(read.Seconds(), "directory_read_s")
	b.ReportMetric(float64(users)/perOp.Seconds(), "users/s")
}
