package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/dovecotadm"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
)

// The mailbox benchmarks run the real `mailsync run` binary (mailbox
// handler only) against slapd and Dovecot and report its rate as a ratio
// to a floor measured in the same run on the same Dovecot, rounds of the
// two alternating; the median ratio, its spread and the load average.
//
//	go test -run '^$' -bench 'BenchmarkMailboxCreate2k|BenchmarkRename1k' -benchtime 1x -timeout 30m ./cmd/mailsync/
//
// MAILSYNC_BENCH_ROUNDS sets the rounds (default 3), MAILSYNC_BENCH_USERS
// the entries per round (default 2,000 creates, 1,000 renames).

// BenchmarkMailboxCreate2k: 2,000 users added to the directory (8 LDAP
// writers), timed from the first add until every one's home carries its
// owner marker and the consumer has acked everything. Floor: the same
// number of fresh mailboxes (the same folders) created straight through
// doveadm's HTTP API, 50 mailboxCreate commands a request, 4 requests in
// flight, auth cache flushed first (the homes of the round just made,
// removed).
func BenchmarkMailboxCreate2k(b *testing.B) {
	n, rounds := benchCount(b, "MAILSYNC_BENCH_USERS", 2000), benchCount(b, "MAILSYNC_BENCH_ROUNDS", 3)
	e := startMailboxBench(b)
	for i := 0; i < b.N; i++ {
		var ratios []float64
		for r := 0; r < rounds; r++ {
			addrs := make([]string, n)
			for j := range addrs {
				addrs[j] = fmt.Sprintf("c%d-%d-%05d@example.org", i, r, j)
			}
			load := loadavg()
			cpu0 := e.cpu()
			t0 := time.Now()
			testenv.Parallel(n, 8, func(j int) {
				uid, _, _ := strings.Cut(addrs[j], "@")
				e.ldap.AddUser(b, uid, addrs[j], nil)
			})
			added := time.Since(t0)
			e.waitMarked(b, addrs, t0)
			took := time.Since(t0)
			cpu := e.cpu().since(cpu0)

			// Floor on the same Dovecot: the same users, homes gone.
			folders, err := e.adm.ListMailboxes(context.Background(), addrs[0])
			if err != nil {
				b.Fatal(err)
			}
			// INBOX first, as the handler asks: a folder made first makes
			// the maildir, and with it INBOX, so creating INBOX then fails.
			slices.SortStableFunc(folders, func(x, y string) int {
				return cmp.Compare(inboxFirst(x), inboxFirst(y))
			})
			for _, a := range addrs {
				if err := os.RemoveAll(e.dc.Home(a)); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := e.adm.FlushAuthCache(context.Background()); err != nil {
				b.Fatal(err)
			}
			fcpu0 := e.cpu()
			floor := e.floorCreate(b, addrs, folders)
			fcpu := e.cpu().since(fcpu0)
			ratio := floor.Seconds() / took.Seconds()
			ratios = append(ratios, ratio)
			b.Logf("round %d: mailsync %d creates in %.2f s (%.0f/s; LDAP adds alone %.2f s; %s), floor %.2f s (%.0f/s; %s): ratio %.2f; load %s",
				r+1, n, took.Seconds(), float64(n)/took.Seconds(), added.Seconds(), cpu, floor.Seconds(), float64(n)/floor.Seconds(), fcpu, ratio, load)
		}
		reportRatios(b, ratios)
	}
}

// BenchmarkRename1k: 1,000 users, each renamed in the directory (16 LDAP
// writers), timed from the first modify until every new home carries its
// marker naming the new address and the consumer has acked everything.
// Floor: the same homes, rename(2) plus one auth cache flush (doveadm
// HTTP) each, 16 at once. A sample's mail is read over IMAP at the new
// address after each round.
func BenchmarkRename1k(b *testing.B) {
	n, rounds := benchCount(b, "MAILSYNC_BENCH_USERS", 1000), benchCount(b, "MAILSYNC_BENCH_ROUNDS", 3)
	e := startMailboxBench(b)
	dns, addrs := make([]string, n), make([]string, n)
	for j := range addrs {
		addrs[j] = fmt.Sprintf("r%05d@example.org", j)
	}
	t0 := time.Now()
	testenv.Parallel(n, 8, func(j int) { dns[j] = e.ldap.AddUser(b, fmt.Sprintf("r%05d", j), addrs[j], nil) })
	e.waitMarked(b, addrs, t0)
	sample := []int{0, n / 2, n - 1}
	for _, j := range sample {
		e.dc.Deliver(b, addrs[j], "kept across renames")
	}
	for i := 0; i < b.N; i++ {
		var ratios []float64
		for r := 0; r < rounds; r++ {
			next := make([]string, n)
			for j := range next {
				next[j] = fmt.Sprintf("r%05d.%d.%d@example.org", j, i, r)
			}
			load := loadavg()
			cpu0 := e.cpu()
			t0 := time.Now()
			testenv.Parallel(n, 16, func(j int) {
				e.ldap.Modify(b, dns[j], map[string][]string{"mailPrimaryAddress": {next[j]}})
			})
			e.waitMarked(b, next, t0)
			took := time.Since(t0)
			cpu := e.cpu().since(cpu0)
			for _, a := range addrs {
				if _, err := os.Stat(e.dc.Home(a)); err == nil {
					b.Fatalf("old home of %s still there after its rename", a)
				}
			}
			for _, j := range sample {
				if got := e.dc.MailboxSummary(b, next[j])["INBOX"].Messages; got != 1 {
					b.Fatalf("%s over IMAP after the rename: %d messages in INBOX, want 1", next[j], got)
				}
			}
			addrs = next

			// Floor: the same homes, rename(2) and a flush each.
			start := time.Now()
			testenv.Parallel(n, 16, func(j int) {
				from := e.dc.Home(addrs[j])
				if err := os.Rename(from, from+".raw"); err != nil {
					b.Error(err)
				}
				if _, err := e.adm.FlushAuthCache(context.Background()); err != nil {
					b.Error(err)
				}
			})
			floor := time.Since(start)
			testenv.Parallel(n, 16, func(j int) {
				from := e.dc.Home(addrs[j])
				if err := os.Rename(from+".raw", from); err != nil {
					b.Error(err)
				}
			})
			ratio := floor.Seconds() / took.Seconds()
			ratios = append(ratios, ratio)
			b.Logf("round %d: mailsync %d renames in %.2f s (%.0f/s; %s), floor %.2f s (%.0f/s): ratio %.2f; load %s",
				r+1, n, took.Seconds(), float64(n)/took.Seconds(), cpu, floor.Seconds(), float64(n)/floor.Seconds(), ratio, load)
		}
		reportRatios(b, ratios)
	}
}

// mailboxBench is a slapd, a Dovecot and `mailsync run` with the mailbox
// handler.
type mailboxBench struct {
	ldap *testenv.Slapd
	dc   *testenv.Dovecot
	adm  *dovecotadm.Client
	cfg  string
	pid  int
}

// cpu is the CPU time used so far by mailsync run, Dovecot (with every
// process it ran) and slapd: where a phase's time went.
type cpuUse struct{ mailsync, dovecot, slapd time.Duration }

func (e *mailboxBench) cpu() cpuUse {
	return cpuUse{testenv.ProcessCPU(e.pid, false), e.dc.CPU(), e.ldap.CPU()}
}

func (c cpuUse) since(c0 cpuUse) cpuUse {
	return cpuUse{c.mailsync - c0.mailsync, c.dovecot - c0.dovecot, c.slapd - c0.slapd}
}

func (c cpuUse) String() string {
	return fmt.Sprintf("CPU mailsync %.2f s, dovecot %.2f s, slapd %.2f s", c.mailsync.Seconds(), c.dovecot.Seconds(), c.slapd.Seconds())
}

func startMailboxBench(b *testing.B) *mailboxBench {
	ldap := testenv.StartSlapd(b)
	dc := testenv.StartDovecot(b, ldap, testenv.DovecotOptions{FQDN: mailHost})
	adm, err := dovecotadm.New(dc.DoveadmURL, dc.APIKey)
	if err != nil {
		b.Fatal(err)
	}
	cfg, _ := verbConfig(b, ldap, dc, []string{"mailbox"}, "metrics:\n  listen: \"off\"\n")
	var logs testenv.LogBuffer
	cmd := exec.Command(testenv.BuildMailsync(b), "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if b.Failed() {
			b.Logf("mailsync run:\n%s", logs.String())
		}
	})
	e := &mailboxBench{ldap: ldap, dc: dc, adm: adm, cfg: cfg, pid: cmd.Process.Pid}
	testenv.Eventually(b, time.Minute, func() error {
		if out, _, code := verb(b, cfg, "status"); code != 0 || !strings.Contains(out, "sync cookie stored") {
			return fmt.Errorf("mailsync run not up: %s", out)
		}
		return nil
	})
	return e
}

// waitMarked waits until every address's home has its owner marker naming
// it, then until `mailsync status` shows nothing pending. It polls the first
// address not done yet, so the polling costs next to nothing beside the
// daemon and Dovecot (reading every marker each time took CPU from both).
func (e *mailboxBench) waitMarked(b *testing.B, addrs []string, since time.Time) {
	var marks []string
	for i := 0; i < len(addrs); {
		data, err := os.ReadFile(filepath.Join(e.dc.Home(addrs[i]), mailbox.MarkerFile))
		var m struct{ Address string }
		if err == nil && json.Unmarshal(data, &m) == nil && m.Address == addrs[i] {
			i++
			if i%(max(len(addrs)/4, 1)) == 0 {
				marks = append(marks, fmt.Sprintf("%d%% %.1fs", i*100/len(addrs), time.Since(since).Seconds()))
			}
			continue
		}
		if time.Since(since) > 10*time.Minute {
			b.Fatalf("%d of %d mailboxes not done after 10 minutes, first %s", len(addrs)-i, len(addrs), addrs[i])
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		out, _, code := verb(b, e.cfg, "status")
		if code == 0 && caughtUp(out, 1) {
			b.Logf("marked %s; caught up %.1fs", strings.Join(marks, ", "), time.Since(since).Seconds())
			return
		}
		if time.Since(since) > 10*time.Minute {
			b.Fatalf("not caught up after 10 minutes:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// floorCreate creates the mailboxes straight through doveadm's HTTP API,
// 50 mailboxCreate commands a request and 4 requests in flight, and
// returns how long that took.
func (e *mailboxBench) floorCreate(b *testing.B, addrs, folders []string) time.Duration {
	const perRequest, inFlight = 50, 4
	var chunks [][]string
	for lo := 0; lo < len(addrs); lo += perRequest {
		chunks = append(chunks, addrs[lo:min(lo+perRequest, len(addrs))])
	}
	authz := "X-Dovecot-API " + base64.StdEncoding.EncodeToString([]byte(e.dc.APIKey))
	start := time.Now()
	testenv.Parallel(len(chunks), inFlight, func(c int) {
		var cmds [][]any
		for i, a := range chunks[c] {
			cmds = append(cmds, []any{"mailboxCreate", map[string]any{"user": a, "mailbox": folders, "subscriptions": true}, strconv.Itoa(i)})
		}
		body, _ := json.Marshal(cmds)
		req, _ := http.NewRequest(http.MethodPost, e.dc.DoveadmURL, bytes.NewReader(body))
		req.Header.Set("Authorization", authz)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Error(err)
			return
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var replies [][]json.RawMessage
		if err := json.Unmarshal(raw, &replies); err != nil || len(replies) != len(cmds) {
			b.Errorf("floor request: %d %.300s", resp.StatusCode, raw)
			return
		}
		for _, r := range replies {
			if string(r[0]) != `"doveadmResponse"` {
				b.Errorf("floor command failed: %s", r)
			}
		}
	})
	return time.Since(start)
}

// reportRatios reports the median ratio to the floor and its spread.
func reportRatios(b *testing.B, ratios []float64) {
	b.ReportMetric(testenv.Median(slices.Clone(ratios)), "median-ratio-to-floor")
	b.ReportMetric(slices.Min(ratios), "min-ratio")
	b.ReportMetric(slices.Max(ratios), "max-ratio")
	b.Logf("ratios to the floor %.2f; load %s", ratios, loadavg())
}

// inboxFirst ranks INBOX before every other folder.
func inboxFirst(folder string) int {
	if folder == "INBOX" {
		return 0
	}
	return 1
}

func benchCount(b *testing.B, env string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(env)); err == nil && v > 0 {
		return v
	}
	return def
}
