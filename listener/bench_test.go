package listener_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/listener"
)

// peakRSS returns the process's peak resident set (VmHWM) in MB.
func peakRSS(b *testing.B) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkInitialRefresh measures the initial refresh of 100k users and 5k
// groups (20 members each, every 10th group nested) from slapd into the
// stream, against a raw ldapsearch of the same filter and attributes in the
// same run. Single runs of either swing by 15% or more on a shared 2-core
// machine, so each iteration alternates MAILSYNC_BENCH_ROUNDS rounds
// (default 5) of the two and reports the medians, their ratio, and the
// highest peak RSS of the rounds. Set MAILSYNC_BENCH_USERS to change the
// size.
func BenchmarkInitialRefresh(b *testing.B) {
	users, groups := 100000, 5000
	if v := os.Getenv("MAILSYNC_BENCH_USERS"); v != "" {
		users, _ = strconv.Atoi(v)
		groups = users / 20
	}
	rounds := testenv.BenchRounds()
	base := "dc=example,dc=org"
	ldif := testenv.GenerateLDIF(b, base, testenv.DirectoryShape{Users: users, Groups: groups, Members: 20, Nested: 10})
	slapd := testenv.StartSlapdWith(b, testenv.SlapdOptions{Preload: ldif})
	ldapsearch := testenv.Require(b, "ldapsearch", "ldap-utils")
	total := users + groups

	for i := 0; i < b.N; i++ {
		var raws, syncs, cpus []float64
		rss := 0.0
		for r := 0; r < rounds; r++ {
			raws = append(raws, rawSearch(b, ldapsearch, slapd, base, total).Seconds())
			took, cpu, peak := refresh(b, slapd, base, total)
			syncs = append(syncs, took.Seconds())
			cpus = append(cpus, cpu.Seconds())
			rss = max(rss, peak)
		}
		raw, ms := testenv.Median(raws), testenv.Median(syncs)
		b.ReportMetric(raw, "ldapsearch_s")
		b.ReportMetric(ms, "mailsync_s")
		b.ReportMetric(ms/raw, "ratio")
		b.ReportMetric(float64(total)/ms, "entries/s")
		b.ReportMetric(rss, "peak_rss_MB")
		// CPU of this process (listener and embedded NATS) during the
		// refresh: unlike the times, it hardly moves when other work
		// shares the machine.
		b.ReportMetric(testenv.Median(cpus), "mailsync_cpu_s")
		b.Logf("%d rounds: ldapsearch %.2f s, mailsync %.2f s (ratios of the medians: %.2f; best against best: %.2f)",
			rounds, raws, syncs, ms/raw, slices.Min(syncs)/slices.Min(raws))
	}
}

// rawSearch is the baseline: ldapsearch of the listener's filter and
// attributes, its output read and the entries counted.
func rawSearch(b *testing.B, ldapsearch string, slapd *testenv.Slapd, base string, total int) time.Duration {
	args := append([]string{"-x", "-LLL", "-H", slapd.URL, "-D", slapd.AdminDN, "-w", slapd.AdminPW,
		"-b", base, event.Filter, "entryUUID", "entryCSN"}, event.Followed...)
	t0 := time.Now()
	cmd := exec.Command(ldapsearch, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	n := 0
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "dn: ") {
			n++
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatal(err)
	}
	took := time.Since(t0)
	if n != total {
		b.Fatalf("ldapsearch returned %d entries, want %d", n, total)
	}
	return took
}

// refresh runs mailsync's listener into a fresh embedded JetStream until
// the directory is published, and returns the time, the CPU this process
// used meanwhile and its peak RSS in MB. The server is shut down after.
func refresh(b *testing.B, slapd *testenv.Slapd, base string, total int) (took, cpu time.Duration, rssMB float64) {
	n := testenv.StartNATS(b)
	bus := n.Bus(b)
	defer func() { bus.NC.Close(); n.Server.Shutdown(); n.Server.WaitForShutdown() }()
	// What earlier rounds left is handed back to the OS before the peak
	// resident set is reset.
	debug.FreeOSMemory()
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // reset VmHWM
	l := listener.New(listener.Config{URL: slapd.URL, BindDN: slapd.AdminDN, BindPassword: slapd.AdminPW, BaseDN: base},
		bus, zerolog.Nop(), listener.Hooks{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cpu0 := cpuTime(b)
	t1 := time.Now()
	go func() { done <- l.Run(ctx) }()
	for {
		s := l.Status()
		if s.Entries == total && !s.Refreshing && s.Published == uint64(total) {
			break
		}
		if time.Since(t1) > 10*time.Minute {
			b.Fatalf("refresh not done after 10 minutes: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	took = time.Since(t1)
	cpu = cpuTime(b) - cpu0
	rssMB = peakRSS(b)
	cancel()
	<-done
	info, err := bus.Stream.Info(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	if info.State.Msgs != uint64(total) {
		b.Fatalf("stream holds %d events, want %d", info.State.Msgs, total)
	}
	return took, cpu, rssMB
}
