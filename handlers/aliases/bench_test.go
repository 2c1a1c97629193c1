package aliases

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/runner"
	"mailsync/stream"
)

// bigDir is 100k users (a third with an alternative address, some
// forwarding) and 5k groups in 5 levels of 1,000, each holding 20 users and
// 2 groups of the level below.
func bigDir() *dirBuilder {
	r := rand.New(rand.NewPCG(1, 2))
	d := newDir()
	const users, levels, perLevel = 100000, 5, 1000
	for i := 0; i < users; i++ {
		uid := fmt.Sprintf("u%06d", i)
		extra := event.Attrs{}
		if i%3 == 0 {
			extra[event.AttrAlternativeAddress] = []string{"alt-" + uid + "@example.net"}
		}
		if i%50 == 0 {
			extra[event.AttrForwardAddress] = []string{uid + "@outside.test"}
			extra[event.AttrForwardCopyToSelf] = []string{"1"}
		}
		d.user(uid, uid+"@example.org", extra)
	}
	for lv := levels - 1; lv >= 0; lv-- {
		for j := 0; j < perLevel; j++ {
			var m []string
			for k := 0; k < 20; k++ {
				m = append(m, userDN(fmt.Sprintf("u%06d", r.IntN(users))))
			}
			if lv < levels-1 {
				m = append(m, groupDN(fmt.Sprintf("g%d-%04d", lv+1, r.IntN(perLevel))), groupDN(fmt.Sprintf("g%d-%04d", lv+1, r.IntN(perLevel))))
			}
			cn := fmt.Sprintf("g%d-%04d", lv, j)
			d.group(cn, cn+"@example.org", m, nil)
		}
	}
	d.domain("example.org")
	return d
}

// Full build (model, render, three postmaps, fsync, rename) against postmap
// alone on the same final files, same run: the three postmaps one after
// the other, and side by side as the build runs them. Each iteration
// alternates testenv.BenchRounds() rounds of the build and the baselines,
// reports the medians and their ratios, and how many rounds' builds took
// at most twice their round's side-by-side postmaps; the first build,
// which meets a heap and a page cache not yet grown, is reported on its
// own (cold-build-s).
func BenchmarkFullBuild100kUsers5kGroups(b *testing.B) {
	pf := testenv.StartPostfix(b)
	// Postfix reads a main.cf changed in the last second or so only after
	// pausing for it to cool down (dict_load_file_xt, 300ms at a time):
	// with a config dir made just now, the first postmap runs of the first
	// build waited about two seconds, which no later build and no baseline
	// run ever waits. Aged here, the build and the baseline both meet it
	// as a live system has it.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(pf.ConfigDir, "main.cf"), old, old); err != nil {
		b.Fatal(err)
	}
	entries := bigDir().all()
	rounds := testenv.BenchRounds()
	// The handler of the round before, closed: a reload holds the model it
	// replaces while it builds, and no more. (A fixture's cleanup would
	// hold every round's handler to the end, so that each build met a
	// heap a model larger than the last, which no daemon has.)
	var prev *Handler
	for i := 0; i < b.N; i++ {
		var builds, pms, pars []float64
		within := 0
		for r := 0; r < rounds; r++ {
			dir := b.TempDir()
			start := time.Now()
			h, err := New(Config{Dir: dir, PostmapPath: pf.Postmap, PostfixConfigDir: pf.ConfigDir,
				Coalesce: 2 * time.Millisecond}, zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			if err := h.Load(context.Background(), entries); err != nil {
				b.Fatal(err)
			}
			builds = append(builds, time.Since(start).Seconds())
			h.Close()
			runtime.KeepAlive(prev)
			prev = h
			pms = append(pms, postmapAlone(b, pf, dir, false).Seconds())
			pars = append(pars, postmapAlone(b, pf, dir, true).Seconds())
			if builds[r] <= 2*pars[r] {
				within++
			}
		}
		cold := builds[0]
		b.Logf("%d rounds (load %s): build %.2f s, postmap alone %.2f s, side by side %.2f s (first build %.2f s)",
			rounds, loadavg(), builds, pms, pars, cold)
		build, pm, par := testenv.Median(builds), testenv.Median(pms), testenv.Median(pars)
		b.ReportMetric(build, "build-s")
		b.ReportMetric(pm, "postmap-s")
		b.ReportMetric(par, "postmap-parallel-s")
		b.ReportMetric(build/pm, "build/postmap")
		b.ReportMetric(build/par, "build/postmap-parallel")
		b.ReportMetric(float64(within), "rounds-within-2x-parallel")
		b.ReportMetric(cold, "cold-build-s")
	}
}

// postmapAlone is the full build's baseline: postmap alone on copies of
// the sources the build wrote to dir, the three tables one after the
// other or, parallel, side by side.
func postmapAlone(b *testing.B, pf *testenv.Postfix, dir string, parallel bool) time.Duration {
	base := b.TempDir()
	var files []string
	for _, name := range []string{AliasMap, MailboxMap, DomainMap} {
		src, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		p := filepath.Join(base, name)
		if err := os.WriteFile(p, src, 0o644); err != nil {
			b.Fatal(err)
		}
		files = append(files, p)
	}
	run := func(p string) {
		if out, err := exec.Command(pf.Postmap, "-c", pf.ConfigDir, "hash:"+p).CombinedOutput(); err != nil {
			b.Errorf("postmap: %v %s", err, out)
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, p := range files {
		if parallel {
			wg.Go(func() { run(p) })
		} else {
			run(p)
		}
	}
	wg.Wait()
	return time.Since(start)
}

// One membership change until it is in the live map: p50 and p99 over 200
// changes an iteration (make bench runs one), and the bytes each change
// writes, postmap's included (/proc/self/io counts the children waited
// for): wchar (what write calls passed) and write_bytes (what reached the
// block layer), median and mean over the changes (the mean carries the
// whole writes that compact the sources now and then) and the largest.
func BenchmarkMembershipChange100k(b *testing.B) {
	pf := testenv.StartPostfix(b)
	d := bigDir()
	f := newFixture(b, pf, func(c *Config) { c.Coalesce = -1 })
	f.load(b, d.all())
	r := rand.New(rand.NewPCG(3, 4))
	var lat []time.Duration
	var wchar, wbytes []float64
	b.ResetTimer()
	for i := 0; i < b.N*200; i++ {
		g := d.entries[fmt.Sprintf("g-g%d-%04d", r.IntN(5), r.IntN(1000))]
		mem := append(append([]string(nil), g.Attrs[event.AttrUniqueMember]...), userDN(fmt.Sprintf("u%06d", r.IntN(100000))))
		ev, ne := modifyEvent(g, event.Attrs{event.AttrUniqueMember: mem})
		d.entries[g.UUID] = ne
		wc, wb := ioCounts(b)
		start := time.Now()
		if err := f.h.Handle(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		wc2, wb2 := ioCounts(b)
		wchar, wbytes = append(wchar, float64(wc2-wc)/1e6), append(wbytes, float64(wb2-wb)/1e6)
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Milliseconds()), "p99-ms")
	mean := func(xs []float64) float64 {
		t := 0.0
		for _, x := range xs {
			t += x
		}
		return t / float64(len(xs))
	}
	b.ReportMetric(mean(wchar), "wchar-MB/change")
	b.ReportMetric(mean(wbytes), "write_bytes-MB/change")
	b.ReportMetric(slices.Max(wchar), "max-wchar-MB")
	b.ReportMetric(testenv.Median(wchar), "p50-wchar-MB")
	b.ReportMetric(testenv.Median(wbytes), "p50-write_bytes-MB")
	b.Logf("load %s; %d changes", loadavg(), len(lat))
}

// ioCounts is this process's wchar and write_bytes, children it waited for
// included.
func ioCounts(b *testing.B) (wchar, writeBytes int64) {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "wchar":
			wchar = n
		case "write_bytes":
			writeBytes = n
		}
	}
	return wchar, writeBytes
}

// Lookup of a 1,000-member nested group (g9 holds 100 users and g8, which
// holds 100 and g7, ... down to g0): `postmap -q` against the materialised
// map versus against UCS's live ldap: groups table (reference §3.3) on the
// same slapd, same run, alternating.
func BenchmarkLookupNestedGroup1000(b *testing.B) {
	s := testenv.StartSlapdWith(b, testenv.SlapdOptions{Preload: testenv.GenerateLDIF(b, base, testenv.DirectoryShape{
		Users: 1000, Groups: 10, Members: 100, Nested: 1})})
	pf := testenv.StartPostfix(b)
	pf.RequireMapType(b, "ldap")
	f := newFixture(b, pf, nil)
	f.load(b, s.Entries(b))
	ucsAlias, _, _ := ucsTables(b, s)
	const key = "g9@example.org"
	tables := []string{f.table(AliasMap), ucsAlias[0]}
	for _, tbl := range tables {
		if got := splitValues(pf.Query(b, tbl, key)[key]); len(got) != 1000 {
			b.Fatalf("%s: %s expands to %d addresses, want 1000", tbl, key, len(got))
		}
	}
	if a, u := f.lookup(b, AliasMap, key), splitValues(pf.Query(b, ucsAlias[0], key)[key]); !eq(a, u) {
		b.Fatalf("materialised and ldap: lookups of %s differ", key)
	}
	var took [2]time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, tbl := range tables {
			start := time.Now()
			out, err := exec.Command(pf.Postmap, "-c", pf.ConfigDir, "-q", key, tbl).Output()
			took[j] += time.Since(start)
			if err != nil || len(out) < 1000*10 {
				b.Fatalf("postmap -q %s %s: %v (%d bytes)", key, tbl, err, len(out))
			}
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(took[0].Seconds()*1000/n, "map-ms/lookup")
	b.ReportMetric(took[1].Seconds()*1000/n, "ldap-ms/lookup")
	b.ReportMetric(float64(took[1])/float64(took[0]), "ldap/map")
}

// A burst of 20,000 membership changes (random groups of bigDir, each
// gaining a random user) through the real runner and stream, from the
// first publish until every event is acked, that is, in the maps on disk;
// against a full rebuild (Load of the whole directory into a fresh
// handler) in the same run. Rounds alternate; medians and their ratio are
// reported, and after the last round the live maps are compared whole with
// a fresh build of the final directory.
func BenchmarkBurst20kChanges100k(b *testing.B) {
	const burst = 20000
	pf := testenv.StartPostfix(b)
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(pf.ConfigDir, "main.cf"), old, old); err != nil {
		b.Fatal(err)
	}
	d := bigDir()
	bus := testenv.StartNATS(b).Bus(b)
	ctx := context.Background()
	// The directory as the listener leaves it after its first refresh.
	for i, e := range d.all() {
		data, _ := json.Marshal(e)
		if _, err := bus.JS.PublishAsync("$KV."+stream.EntriesBucket+"."+e.UUID, data); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			<-bus.JS.PublishAsyncComplete()
		}
	}
	<-bus.JS.PublishAsyncComplete()
	if _, err := bus.State.Put(ctx, stream.KeyCookie, []byte("bench")); err != nil {
		b.Fatal(err)
	}
	var installs []string // when each table went in during a burst
	var burstStart time.Time
	var imu sync.Mutex
	f := newFixture(b, pf, func(c *Config) {
		c.Coalesce = DefaultCoalesce // as deployed
		c.Installed = func(table string, took time.Duration) {
			imu.Lock()
			defer imu.Unlock()
			if !burstStart.IsZero() {
				installs = append(installs, fmt.Sprintf("%s@%.2fs(%.2fs)", table, time.Since(burstStart).Seconds(), took.Seconds()))
			}
		}
	})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- runner.New(bus, runner.Config{Host: "mx.example.org"}, zerolog.Nop(), f.h).Run(rctx)
	}()
	b.Cleanup(func() { stop(); <-done })
	testenv.Eventually(b, 60*time.Second, func() error {
		if f.h.writes.Load() < 3 {
			return fmt.Errorf("runner has not loaded the handler yet")
		}
		return nil
	})
	cons := runner.ConsumerName("aliases", "mx.example.org")
	r := rand.New(rand.NewPCG(5, 6))
	rounds := testenv.BenchRounds()
	for i := 0; i < b.N; i++ {
		var bursts, builds, writes, burstCPU, buildCPU []float64
		for round := 0; round < rounds; round++ {
			dir := b.TempDir()
			start, cpu := time.Now(), processCPU(b)
			fresh := newFixture(b, pf, func(c *Config) { c.Dir = dir })
			fresh.load(b, d.all())
			builds = append(builds, time.Since(start).Seconds())
			buildCPU = append(buildCPU, processCPU(b)-cpu)
			fresh.h.Close()

			evs := make([][]byte, burst)
			subjects := make([]string, burst)
			for j := range evs {
				g := d.entries[fmt.Sprintf("g-g%d-%04d", r.IntN(5), r.IntN(1000))]
				mem := append(append([]string(nil), g.Attrs[event.AttrUniqueMember]...), userDN(fmt.Sprintf("u%06d", r.IntN(100000))))
				ev, ne := modifyEvent(g, event.Attrs{event.AttrUniqueMember: mem})
				d.entries[g.UUID] = ne
				evs[j], _ = json.Marshal(ev)
				subjects[j] = ev.Subject()
			}
			before, staged := f.h.writes.Load(), f.h.staged.Load()
			start, cpu = time.Now(), processCPU(b)
			imu.Lock()
			burstStart, installs = start, nil
			imu.Unlock()
			var last *jetstream.PubAck
			// The runner hands the handler only the newest of an entry's
			// events delivered together: when the last was staged, and how
			// many were.
			var lastStaged time.Duration
			stagedSoFar := staged
			for j, data := range evs {
				fut, err := bus.JS.PublishAsync(subjects[j], data)
				if err != nil {
					b.Fatal(err)
				}
				if j%1000 == 999 {
					<-bus.JS.PublishAsyncComplete()
				}
				if j == len(evs)-1 {
					select {
					case last = <-fut.Ok():
					case err := <-fut.Err():
						b.Fatal(err)
					}
				}
			}
			published := time.Since(start)
			var redelivered int
			for {
				c, err := bus.Stream.Consumer(ctx, cons)
				if err != nil {
					b.Fatal(err)
				}
				ci, err := c.Info(ctx)
				if err != nil {
					b.Fatal(err)
				}
				redelivered = ci.NumRedelivered
				if ci.AckFloor.Stream >= last.Sequence && ci.NumAckPending == 0 {
					break
				}
				if n := f.h.staged.Load(); n != stagedSoFar {
					stagedSoFar, lastStaged = n, time.Since(start)
				}
				time.Sleep(10 * time.Millisecond)
			}
			bursts = append(bursts, time.Since(start).Seconds())
			burstCPU = append(burstCPU, processCPU(b)-cpu)
			imu.Lock()
			b.Logf("round %d: published in %.2fs, %d of %d events staged, the last at %.2fs, acked at %.2fs (%d redelivered); installs %v", round+1,
				published.Seconds(), stagedSoFar-staged, burst, lastStaged.Seconds(), bursts[len(bursts)-1], redelivered, installs)
			burstStart = time.Time{}
			imu.Unlock()
			writes = append(writes, float64(f.h.writes.Load()-before))
		}
		b.Logf("%d rounds (load %s): burst of %d %.2f s, full rebuild %.2f s, tables installed per burst %v",
			rounds, loadavg(), burst, bursts, builds, writes)
		burstS, build := testenv.Median(bursts), testenv.Median(builds)
		b.ReportMetric(burstS, "burst-s")
		b.ReportMetric(build, "rebuild-s")
		b.ReportMetric(burstS/build, "burst/rebuild")
		b.ReportMetric(testenv.Median(writes), "installs/burst")
		// CPU-seconds of this process and the postmaps it ran, which
		// move less than the times when other work shares the machine;
		// the burst's include the embedded JetStream storing the events.
		b.ReportMetric(testenv.Median(burstCPU), "burst-cpu-s")
		b.ReportMetric(testenv.Median(buildCPU), "rebuild-cpu-s")
		b.ReportMetric(testenv.Median(burstCPU)/testenv.Median(buildCPU), "burst/rebuild-cpu")
	}
	b.StopTimer()
	// The maps now equal a fresh build of the final directory.
	for _, tb := range fullBuildTables(d.all(), "", DefaultExpansionLimit) {
		got, err := dumpTable(pf, f.table(tb.Name))
		if err != nil {
			b.Fatal(err)
		}
		if want := sourceLines(tb.Src); !eq(got, want) {
			b.Fatalf("%s after the bursts: %d entries, a fresh build %d", tb.Name, len(got), len(want))
		}
	}
}

// processCPU is the user and system CPU-seconds of this process and of
// the children it waited for (postmap).
func processCPU(b *testing.B) float64 {
	var self, children syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		b.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children); err != nil {
		b.Fatal(err)
	}
	var t time.Duration
	for _, ru := range []syscall.Rusage{self, children} {
		t += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return t.Seconds()
}

// loadavg is /proc/loadavg's first three fields, for the log of a run.
func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
