package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/handlers/registry"
	"mailsync/internal/testenv"
)

// BenchmarkResync100k times `mailsync resync` of the maps for a directory
// of 100,000 users in 100 groups, read from slapd, and reports beside it the
// baseline of the same run: reading the directory alone. Mailbox creation
// is not included: it is Dovecot's time (doveadm), a few per second on CI.
// Run: go test -run '^$' -bench Resync100k -benchtime 1x ./cmd/mailsync/
func BenchmarkResync100k(b *testing.B) {
	const users = 100000
	_, cfgPath, dir := bigDirectory(b, users)
	cfg, err := registry.Load(cfgPath)
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

// BenchmarkStart100k starts the real `mailsync run` binary with every
// handler (aliases, homeserver, mailbox) from empty state on a directory of
// 100,000 users and 5,000 groups, 10 times, each until `mailsync status`
// shows the refresh done and every consumer acked to the end of the stream
// with nothing pending, and reports the median and slowest start, their
// ratio, and the highest peak RSS (VmHWM) of the whole process, beside when
// the refresh was done and when each consumer appeared and went idle.
//
// Empty state is mailsync's own: before each start its state dir (the
// embedded NATS store with stream, consumers and buckets; the mailbox
// handler's applied and intent records) and its maps are removed. The
// mailboxes stay: creating 100k of them is Dovecot's work (some 10 ms of
// its CPU each here, 10-15 minutes a start), so the 10 starts run over the
// homes a first, fully fresh start made (homes emptied before it), which is
// reported on its own (fresh-start-s, fresh-peak-rss-MB; its RSS counts in
// peak-rss-MB too). A start over those homes still converges every user:
// it reads each home's owner marker, finds the mailbox made for that entry
// at that address, and writes its applied record, without asking Dovecot.
//
// MAILSYNC_BENCH_HANDLERS replaces the handlers (e.g. "aliases,
// homeserver": the maps only, no Dovecot); MAILSYNC_BENCH_STARTS the
// count. The daemon runs with the GOMEMLIMIT of
// deploy/systemd/mailsync.service, as deployed, unless GOMEMLIMIT is set
// (GOMEMLIMIT=off: none).
func BenchmarkStart100k(b *testing.B) {
	memLimit := os.Getenv("GOMEMLIMIT")
	if memLimit == "" {
		unit, err := os.ReadFile("../../deploy/systemd/mailsync.service")
		if err != nil {
			b.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^Environment=GOMEMLIMIT=(\S+)$`).FindSubmatch(unit)
		if m == nil {
			b.Fatal("mailsync.service sets no GOMEMLIMIT")
		}
		memLimit = string(m[1])
	}
	b.Setenv("GOMEMLIMIT", memLimit)
	b.Logf("GOMEMLIMIT=%s", memLimit)
	handlers := os.Getenv("MAILSYNC_BENCH_HANDLERS")
	if handlers == "" {
		handlers = strings.Join(registry.Known{}.Names(), ", ")
	}
	starts := 10
	if v, err := strconv.Atoi(os.Getenv("MAILSYNC_BENCH_STARTS")); err == nil && v > 0 {
		starts = v
	}
	base := "dc=example,dc=org"
	ldif := testenv.GenerateLDIF(b, base, testenv.DirectoryShape{Users: 100000, Groups: 5000, Members: 20, Nested: 10})
	ldap := testenv.StartSlapdWith(b, testenv.SlapdOptions{Preload: ldif})
	names := strings.FieldsFunc(handlers, func(r rune) bool { return r == ',' || r == ' ' })
	var dc *testenv.Dovecot
	if slices.Contains(names, "mailbox") {
		dc = testenv.StartDovecot(b, ldap, testenv.DovecotOptions{FQDN: mailHost})
	}
	// MAILSYNC_BENCH_VERBOSE: the daemon logs at info and traces its
	// garbage collections; each start's status and log go to stderr.
	verbose := os.Getenv("MAILSYNC_BENCH_VERBOSE") != ""
	cb := verbBuilder(b, ldap, dc, names).Merge("metrics:\n  listen: \"off\"\n")
	if verbose {
		cb.Set("log.level", "info")
	}
	cfg, dir := cb.Write(""), cb.Dir()
	bin := testenv.BuildMailsync(b)
	emptyState := func() {
		os.RemoveAll(filepath.Join(dir, "state"))
		os.RemoveAll(filepath.Join(dir, "maps"))
	}
	for i := 0; i < b.N; i++ {
		var took, rss []float64
		if dc != nil {
			// The fresh start: no mailbox of an earlier one either.
			emptyState()
			homes, _ := os.ReadDir(dc.Spool)
			for _, h := range homes {
				os.RemoveAll(filepath.Join(dc.Spool, h.Name()))
			}
			st := startOnce(b, bin, cfg, len(names), verbose, 40*time.Minute)
			rss = append(rss, st.rssMB)
			b.ReportMetric(st.took, "fresh-start-s")
			b.ReportMetric(st.rssMB, "fresh-peak-rss-MB")
			fmt.Fprintf(os.Stderr, "BenchmarkStart100k fresh start (100k mailboxes created): %.2f s (refresh done %.1f s; %s), peak RSS %.0f MB, load %s\n",
				st.took, st.refreshed, st.phases(), st.rssMB, loadavg())
		}
		for s := 0; s < starts; s++ {
			emptyState()
			st := startOnce(b, bin, cfg, len(names), verbose, 10*time.Minute)
			took, rss = append(took, st.took), append(rss, st.rssMB)
			// On stderr as it happens: a benchmark's log keeps only its
			// first lines, and shows them at the end.
			fmt.Fprintf(os.Stderr, "BenchmarkStart100k start %d: %.2f s (refresh done %.1f s; %s), peak RSS %.0f MB, load %s\n",
				s+1, st.took, st.refreshed, st.phases(), st.rssMB, loadavg())
			if verbose {
				// b.Logf keeps only a benchmark's first lines.
				fmt.Fprintf(os.Stderr, "start %d: %.2f s\nstatus:\n%s\nlog:\n%s\n", s+1, st.took, st.status, st.log)
			}
		}
		med, slowest := testenv.Median(append([]float64(nil), took...)), slices.Max(took)
		b.ReportMetric(med, "median-start-s")
		b.ReportMetric(slowest, "slowest-start-s")
		b.ReportMetric(slowest/med, "slowest/median")
		b.ReportMetric(slices.Max(rss), "peak-rss-MB")
		b.Logf("handlers %s; starts %.2f s; peak RSS %.0f MB", strings.Join(names, ", "), took, rss)
	}
}

// startOnce runs `mailsync run` until status shows it caught up, then
// stops it; it returns how long that took, when the status first showed
// the refresh done, the process's peak RSS, when each consumer first showed
// and first showed caught up, and (verbose) the last status and the
// daemon's log.
func startOnce(b *testing.B, bin, cfg string, consumers int, verbose bool, limit time.Duration) (st startTimes) {
	var logs testenv.LogBuffer
	cmd := exec.Command(bin, "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if verbose {
		cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	since := func() float64 { return time.Since(start).Seconds() }
	last, stuck := "", time.Now()
	for {
		out, _, code := verb(b, cfg, "status")
		if code == 0 {
			if st.refreshed == 0 && strings.Contains(out, "sync cookie stored") {
				st.refreshed = since()
			}
			st.consumers(out, since())
		}
		if code == 0 && caughtUp(out, consumers) {
			st.took = since()
			st.rssMB = vmHWM(b, cmd.Process.Pid)
			if verbose {
				st.status, st.log = out, logs.String()
			}
			return st
		}
		if out != last {
			last, stuck = out, time.Now()
		} else if time.Since(stuck) > 10*time.Second {
			b.Logf("status unchanged for 10s after %s:\n%s", time.Since(start).Round(time.Millisecond), out)
			stuck = time.Now()
		}
		if time.Since(start) > limit {
			b.Fatalf("not caught up after %s:\n%s\n%s", limit, out, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startTimes is what startOnce saw of one start, in seconds from its
// beginning.
type startTimes struct {
	took, refreshed float64
	rssMB           float64
	// per consumer: when `status` first listed it, and first showed it
	// with nothing pending or unacked
	created, done map[string]float64
	status, log   string
}

// consumers records the consumers of a status read at t.
func (st *startTimes) consumers(status string, t float64) {
	if st.created == nil {
		st.created, st.done = map[string]float64{}, map[string]float64{}
	}
	for _, l := range strings.Split(status, "\n") {
		f := strings.Fields(l)
		if len(f) != 5 || f[0] == "CONSUMER" {
			continue
		}
		name, _, _ := strings.Cut(f[0], "-")
		if _, ok := st.created[name]; !ok {
			st.created[name] = t
		}
		if _, ok := st.done[name]; !ok && f[1] == "0" && f[2] == "0" {
			st.done[name] = t
		}
	}
}

// phases is the per consumer timeline, for the log.
func (st *startTimes) phases() string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(st.created)) {
		parts = append(parts, fmt.Sprintf("%s consumer %.1f s, idle %.1f s", n, st.created[n], st.done[n]))
	}
	return strings.Join(parts, "; ")
}

// caughtUp reads `mailsync status`: the first refresh is done, and every
// consumer has nothing pending or unacked and is acked to the stream's end.
// want is the number of consumers the daemon runs (its handlers): a
// handler still loading has none yet, and the start is not over.
func caughtUp(status string, want int) bool {
	if !strings.Contains(status, "sync cookie stored") {
		return false
	}
	m := regexp.MustCompile(`last seq (\d+)`).FindStringSubmatch(status)
	if m == nil || m[1] == "0" {
		return false
	}
	consumers := 0
	for _, l := range strings.Split(status, "\n") {
		f := strings.Fields(l)
		if len(f) != 5 || f[0] == "CONSUMER" {
			continue
		}
		consumers++
		if f[1] != "0" || f[2] != "0" || f[3] != m[1] {
			return false
		}
	}
	return consumers >= want
}

// vmHWM is a process's peak resident set in MB.
func vmHWM(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// loadavg is /proc/loadavg's first three fields.
func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(data)); len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// BenchmarkModifyToLookup100k: on a directory of 100,000 users and 5,000
// groups that mailsync run has caught up with, one LDAP modify of a
// group's members at a time, each timed until `postmap -q` on the live
// alias map shows the new member (polled); p50 and p99 over 100 modifies,
// a quiet 200 ms apart. postmap -q itself (one lookup of an unchanged key)
// is reported as the floor of the same run.
func BenchmarkModifyToLookup100k(b *testing.B) {
	base := "dc=example,dc=org"
	const users, groups = 100000, 5000
	ldif := testenv.GenerateLDIF(b, base, testenv.DirectoryShape{Users: users, Groups: groups, Members: 20, Nested: 10})
	ldap := testenv.StartSlapdWith(b, testenv.SlapdOptions{Preload: ldif})
	cfg, dir := verbConfig(b, ldap, nil, []string{"aliases", "homeserver"}, "metrics:\n  listen: \"off\"\n")
	startDaemon(b, cfg)
	testenv.Eventually(b, 10*time.Minute, func() error {
		if out, _, code := verb(b, cfg, "status"); code != 0 || !caughtUp(out, 2) {
			time.Sleep(time.Second)
			return fmt.Errorf("not caught up:\n%s", out)
		}
		return nil
	})
	postmap := testenv.Require(b, "postmap", "postfix")
	table := "hash:" + filepath.Join(dir, "maps", "virtual_alias")
	c, err := os.ReadFile(cfg)
	if err != nil {
		b.Fatal(err)
	}
	m := regexp.MustCompile(`config_dir: (\S+)`).FindSubmatch(c)
	if m == nil {
		b.Fatal("no postfix config_dir in the config")
	}
	pcfg := string(m[1])
	query := func(key string) string {
		out, _ := exec.Command(postmap, "-c", pcfg, "-q", key, table).Output()
		return string(out)
	}
	var lat, floor []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N*100; i++ {
		g := fmt.Sprintf("g%d", 1+i*37%(groups-1))
		u := fmt.Sprintf("u%d", 1+(i*7919)%(users-1)) // never u0, the other member
		t0 := time.Now()
		query("u1@example.org")
		floor = append(floor, time.Since(t0))
		start := time.Now()
		ldap.Modify(b, ldap.GroupDN(g), map[string][]string{"uniqueMember": {ldap.UserDN(u), ldap.UserDN("u0")}})
		for !strings.Contains(query(g+"@example.org"), u+"@example.org") {
			if time.Since(start) > time.Minute {
				b.Fatalf("%s not in %s after a minute", u, g)
			}
		}
		lat = append(lat, time.Since(start))
		time.Sleep(200 * time.Millisecond)
	}
	b.StopTimer()
	slices.Sort(lat)
	slices.Sort(floor)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
	b.ReportMetric(float64(floor[len(floor)/2].Milliseconds()), "postmap-q-p50-ms")
	b.Logf("load %s; %d modifies; slowest %s", loadavg(), len(lat), lat[len(lat)-1])
}

// A start is over only once every handler's consumer is there and caught
// up: a handler still loading (the aliases build) has no consumer yet, and
// a status listing only the others must not end the start. (It did: starts
// were timed short whenever the aliases consumer was late, up to half of
// each start left out, and the peak RSS read before the heaviest load.)
func TestCaughtUpWaitsForEveryConsumer(t *testing.T) {
	head := "stream MAILSYNC: 105000 events, last seq 105000 at 2026-12-02T03:25:27Z (7s ago)\n" +
		"listener: sync cookie stored 7s ago\n" +
		"CONSUMER                     PENDING  UNACKED  ACKED TO  DEAD\n"
	home := "homeserver-mail_example_org  0        0        105000    0\n"
	aliases := "aliases-mail_example_org     0        0        105000    0\n"
	busy := "aliases-mail_example_org     12       512      104000    0\n"
	for _, c := range []struct {
		status string
		want   bool
	}{
		{head + home, false},
		{head + busy + home, false},
		{head + aliases + home, true},
		{strings.Replace(head, "sync cookie stored 7s ago", "no sync cookie yet", 1) + aliases + home, false},
	} {
		if got := caughtUp(c.status, 2); got != c.want {
			t.Errorf("caughtUp(%q, 2) = %v, want %v", c.status, got, c.want)
		}
	}
}
