package aliases

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailsync/event"
)

// A reader running postmap -q in a loop while the alias map is rewritten
// 1,000 times never misses an address that is in both the old and the new
// map, and always sees a complete value (one version or the other).
func TestReaderNeverMissesDuringRewrites(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil, func(c *Config) { c.Coalesce = -1 })
	d := newDir()
	for i := 0; i < 50; i++ {
		d.user(fmt.Sprint("u", i), fmt.Sprintf("u%d@example.org", i), event.Attrs{
			event.AttrAlternativeAddress: {fmt.Sprintf("alt%d@example.org", i)}})
	}
	g := d.group("stable", "stable@example.org", []string{userDN("u0"), userDN("u1")}, nil)
	f.load(t, d.all())

	stable := []string{"stable@example.org"}
	for i := 0; i < 50; i += 7 {
		stable = append(stable, fmt.Sprintf("alt%d@example.org", i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var lookups, misses atomic.Int64
	var firstMiss atomic.Value
	var wg sync.WaitGroup
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				got, err := f.pf.TryQuery(f.table(AliasMap), stable...)
				if err != nil {
					misses.Add(1)
					firstMiss.CompareAndSwap(nil, err.Error())
					continue
				}
				lookups.Add(1)
				for _, k := range stable {
					v, ok := got[k]
					// stable@ is {u0, u1} or {u0, u2}: u0 is in every version.
					if !ok || (k == "stable@example.org" && !strings.Contains(v, "u0@example.org")) {
						misses.Add(1)
						firstMiss.CompareAndSwap(nil, fmt.Sprintf("%s -> %q (found %v)", k, v, ok))
					}
				}
			}
		}()
	}
	rewrites := 1000
	if testing.Short() {
		rewrites = 200
	}
	before := f.h.writes.Load()
	start := time.Now()
	for i := 0; i < rewrites; i++ {
		second := userDN("u1")
		if i%4 == 0 {
			second = userDN("u2")
		}
		var ev event.Event
		ev, g = modifyEvent(g, event.Attrs{event.AttrUniqueMember: {userDN("u0"), second}})
		// A transient address, in the map only every other version.
		ev2, _ := modifyEvent(d.entries["u-u3"], event.Attrs{event.AttrAlternativeAddress: {fmt.Sprintf("flip%d@example.org", i)}})
		if i%2 == 0 {
			f.handle(t, ev)
		} else {
			f.handle(t, ev2)
		}
	}
	elapsed := time.Since(start)
	cancel()
	wg.Wait()
	n := f.h.writes.Load() - before
	t.Logf("%d alias-map rewrites in %s; %d complete postmap -q lookups of %d keys alongside, %d misses",
		n, elapsed, lookups.Load(), len(stable), misses.Load())
	if n < int64(rewrites) {
		t.Errorf("only %d rewrites", n)
	}
	if misses.Load() > 0 {
		t.Fatalf("%d misses, first: %v", misses.Load(), firstMiss.Load())
	}
	if lookups.Load() < 50 {
		t.Errorf("reader ran only %d times", lookups.Load())
	}
}

// A burst of 10,000 concurrent changes makes few rewrites, and every Handle
// returns only once its change is in the map.
func TestBurstCoalesces(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil, func(c *Config) { c.Coalesce = 20 * time.Millisecond })
	f.load(t, nil)
	before := f.h.writes.Load()
	const n = 10000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid := fmt.Sprintf("b%05d", i)
			e := event.Entry{UUID: "u-" + uid, DN: userDN(uid), Kind: event.KindUser, Attrs: event.Attrs{
				event.AttrObjectClass: {"univentionMail"}, event.AttrUID: {uid},
				event.AttrPrimaryAddress: {uid + "@example.org"}, event.AttrAlternativeAddress: {"x" + uid + "@example.org"}}}
			if err := f.h.Handle(context.Background(), addEvent(e)); err != nil {
				errs <- err
				return
			}
			// Durable before Handle returned: the source on disk has it.
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	writes := f.h.writes.Load() - before
	t.Logf("%d changes -> %d table installs", n, writes)
	if writes > 2*100 { // two tables change per write
		t.Errorf("%d installs for a burst of %d changes", writes, n)
	}
	got := f.pf.Query(t, f.table(AliasMap), "xb00000@example.org", "xb09999@example.org")
	if len(got) != 2 {
		t.Errorf("lookups after the burst: %v", got)
	}
}
