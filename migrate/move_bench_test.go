package migrate_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/migrate"
)

// BenchmarkMove moves a 1,000-message mailbox from host a to host b with
// the Mover (userdb entry and its pickup, GUID alignment, two-way doveadm
// sync over doveadm's tcp protocol, per-folder verification, clean-up)
// against a bare `doveadm backup` of the same mailbox to b in the same run.
// b's copy is removed before each. An iteration alternates
// testenv.BenchRounds() rounds of the two, because a single pair swings
// by a factor of two on a shared machine, and reports the medians and
// their ratio (move/backup); ns/op is the whole iteration, set-up included.
func BenchmarkMove(b *testing.B) {
	const n, u = 1000, "bench@example.org"
	ldap := testenv.StartSlapd(b)
	var sa, sb steps
	ha, hb := startMoveHosts(b, ldap, &sa, &sb)
	ctx := context.Background()
	dn := ldap.AddUser(b, "bench", u, map[string][]string{event.AttrHomeServer: {ha.fqdn}})
	// 1,000 messages written straight into the maildir: faster than LMTP.
	cur := filepath.Join(ha.dc.Home(u), "Maildir", "cur")
	for _, d := range []string{filepath.Dir(ha.dc.Home(u)), ha.dc.Home(u), filepath.Dir(cur), cur, filepath.Join(filepath.Dir(cur), "new"), filepath.Join(filepath.Dir(cur), "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.Chown(d, ha.dc.UID, ha.dc.GID); err != nil {
			b.Fatal(err)
		}
	}
	for i := range n {
		p := filepath.Join(cur, fmt.Sprintf("%d.M%dP1.bench:2,S", time.Now().Unix(), i))
		msg := fmt.Sprintf("From: x@example.org\r\nTo: %s\r\nSubject: message %d\r\nMessage-ID: <%d@bench>\r\n\r\n%0200d\r\n", u, i, i, i)
		if err := os.WriteFile(p, []byte(msg), 0o600); err != nil {
			b.Fatal(err)
		}
		if err := os.Chown(p, ha.dc.UID, ha.dc.GID); err != nil {
			b.Fatal(err)
		}
	}
	// The user's home server is now b: a knows the user only through
	// the moving userdb, as during a real move.
	ldap.Modify(b, dn, map[string][]string{event.AttrHomeServer: {hb.fqdn}})
	mv := migrate.Move{UUID: "bench-0001", DN: dn, Address: u, User: u, Home: ha.dc.Home(u), To: hb.fqdn}
	clearB := func() {
		if err := os.RemoveAll(hb.dc.Home(u)); err != nil {
			b.Fatal(err)
		}
		if _, err := hb.adm.FlushAuthCache(ctx); err != nil {
			b.Fatal(err)
		}
	}
	// resolvable puts u into a's moving userdb and waits until a's doveadm
	// finds it, for the bare backup.
	resolvable := func() {
		line := fmt.Sprintf("%s:::::%s::\n", u, mv.Home)
		if err := os.WriteFile(ha.dc.MovingPasswd, []byte(line), 0o644); err != nil {
			b.Fatal(err)
		}
		testenv.Eventually(b, 10*time.Second, func() error {
			if _, err := ha.adm.FlushAuthCache(ctx); err != nil {
				return err
			}
			_, err := ha.adm.UserHome(ctx, u)
			return err
		})
	}
	count := func() int {
		infos, err := hb.adm.MailboxInfos(ctx, u)
		if err != nil {
			b.Fatal(err)
		}
		for _, i := range infos {
			if i.Name == "INBOX" {
				return i.Messages
			}
		}
		return 0
	}

	rounds := testenv.BenchRounds()
	b.ResetTimer()
	for range b.N {
		var backups, moves []float64
		for range rounds {
			clearB()
			resolvable()
			start := time.Now()
			if err := ha.adm.Backup(ctx, u, "tcp:"+hb.dc.DoveadmTCP); err != nil {
				b.Fatal(err)
			}
			backups = append(backups, time.Since(start).Seconds())
			if got := count(); got != n {
				b.Fatalf("backup: b has %d messages, want %d", got, n)
			}
			clearB()
			if err := os.WriteFile(ha.dc.MovingPasswd, nil, 0o644); err != nil {
				b.Fatal(err)
			}
			time.Sleep(1100 * time.Millisecond) // Dovecot has seen the empty file
			start = time.Now()
			if err := ha.mover.MoveAway(ctx, mv, nil); err != nil {
				b.Fatal(err)
			}
			moves = append(moves, time.Since(start).Seconds())
			if got := count(); got != n {
				b.Fatalf("move: b has %d messages, want %d", got, n)
			}
		}
		b.Logf("%d rounds: move %.2f s, bare backup %.2f s", rounds, moves, backups)
		move, backup := testenv.Median(moves), testenv.Median(backups)
		b.ReportMetric(backup*1000, "backup-ms")
		b.ReportMetric(move*1000, "move-ms")
		b.ReportMetric(move/backup, "move/backup")
	}
}
