package aliases

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/postmap"
)

// randDir generates directories and changes over a small universe of
// names and addresses, so that collisions, dangling members, renames onto
// a DN another entry just left, cycles and self-membership all happen.
type randDir struct {
	r   *rand.Rand
	d   *dirBuilder
	seq int
}

func (g *randDir) addr() string {
	doms := []string{"example.org", "Example.Net", "outside.test"}
	return fmt.Sprintf("a%d@%s", g.r.IntN(40), doms[g.r.IntN(len(doms))])
}

func (g *randDir) addrs(max int) []string {
	var out []string
	for i := g.r.IntN(max + 1); i > 0; i-- {
		out = append(out, g.addr())
	}
	return out
}

// dn picks a DN some entry has, had, or might get, in random case.
func (g *randDir) dn() string {
	var dn string
	switch g.r.IntN(3) {
	case 0:
		dn = userDN(fmt.Sprint("u", g.r.IntN(25)))
	case 1:
		dn = groupDN(fmt.Sprint("g", g.r.IntN(12)))
	default:
		if len(g.d.order) > 0 {
			if e, ok := g.d.entries[g.d.order[g.r.IntN(len(g.d.order))]]; ok {
				dn = e.DN
				break
			}
		}
		dn = listDN(fmt.Sprint("l", g.r.IntN(4)))
	}
	if g.r.IntN(4) == 0 {
		dn = strings.ToUpper(dn[:4]) + strings.ReplaceAll(dn[4:], ",", ", ")
	}
	return dn
}

func (g *randDir) attrs(kind event.Kind) event.Attrs {
	a := event.Attrs{}
	set := func(k string, v []string) {
		if len(v) > 0 {
			a[k] = v
		}
	}
	if g.r.IntN(5) > 0 {
		set(event.AttrPrimaryAddress, []string{g.addr()})
	}
	set(event.AttrAlternativeAddress, g.addrs(2))
	switch kind {
	case event.KindUser:
		a[event.AttrObjectClass] = []string{"univentionMail"}
		a[event.AttrUID] = []string{"x"}
		if g.r.IntN(3) == 0 {
			set(event.AttrForwardAddress, g.addrs(2))
			a[event.AttrForwardCopyToSelf] = []string{fmt.Sprint(g.r.IntN(2))}
		}
		if g.r.IntN(15) == 0 {
			a[event.AttrCanonicalRewrite] = []string{"1"}
		}
		if g.r.IntN(20) == 0 {
			a[event.AttrAlternativeAddress] = []string{"not an address"}
		}
	case event.KindGroup:
		a[event.AttrObjectClass] = []string{"posixGroup"}
		var mem []string
		for i := g.r.IntN(5); i > 0; i-- {
			mem = append(mem, g.dn())
		}
		set(event.AttrUniqueMember, mem)
	case event.KindList:
		a[event.AttrObjectClass] = []string{"univentionMailList"}
		set(event.AttrMailMember, g.addrs(3))
	case event.KindFolder:
		a[event.AttrObjectClass] = []string{"univentionMailSharedFolder"}
		a[event.AttrHomeServer] = []string{[]string{"mail.example.org", "other.example.org"}[g.r.IntN(2)]}
	case event.KindDomain:
		a = event.Attrs{event.AttrObjectClass: {"univentionMailDomainname"},
			event.AttrCN: {[]string{"example.org", "Example.Net", "x.test"}[g.r.IntN(3)]}}
	}
	return a
}

// newEntry makes an entry with a fresh UUID and a DN from the universe.
func (g *randDir) newEntry() event.Entry {
	g.seq++
	kinds := []event.Kind{event.KindUser, event.KindUser, event.KindUser, event.KindGroup, event.KindGroup, event.KindList, event.KindFolder, event.KindDomain}
	k := kinds[g.r.IntN(len(kinds))]
	var dn string
	switch k {
	case event.KindUser:
		dn = userDN(fmt.Sprint("u", g.r.IntN(25)))
	case event.KindGroup:
		dn = groupDN(fmt.Sprint("g", g.r.IntN(12)))
	case event.KindList:
		dn = listDN(fmt.Sprint("l", g.r.IntN(4)))
	case event.KindFolder:
		dn = folderDN(fmt.Sprint("f", g.r.IntN(4)))
	default:
		dn = fmt.Sprintf("cn=d%d,cn=domain,%s", g.r.IntN(3), base)
	}
	return event.Entry{UUID: fmt.Sprintf("uuid-%04d", g.seq), DN: dn, Kind: k, Attrs: g.attrs(k)}
}

// change makes one random event and applies it to the builder.
func (g *randDir) change(exclude map[string]bool) (event.Event, bool) {
	live := []string{}
	for _, u := range g.d.order {
		if _, ok := g.d.entries[u]; ok && !exclude[u] {
			live = append(live, u)
		}
	}
	if len(live) == 0 || g.r.IntN(4) == 0 {
		e := g.newEntry()
		g.d.add(e.UUID, e.DN, e.Kind, e.Attrs)
		return addEvent(e), true
	}
	old := g.d.entries[live[g.r.IntN(len(live))]]
	switch n := g.r.IntN(10); {
	case n < 2:
		delete(g.d.entries, old.UUID)
		return deleteEvent(old), true
	case n < 3: // modrdn, possibly onto another entry's DN
		ne := old
		ne.DN = g.newEntry().DN
		if ne.Kind != event.KindDomain && g.r.IntN(2) == 0 {
			ne.DN = g.dn()
		}
		g.d.entries[old.UUID] = ne
		return event.Event{V: event.Version, Op: event.OpModify, Kind: ne.Kind, UUID: ne.UUID, DN: ne.DN, OldDN: old.DN,
			Old: old.Attrs, New: ne.Attrs}, true
	default:
		ne := old
		ne.Attrs = g.attrs(old.Kind)
		g.d.entries[old.UUID] = ne
		return event.Event{V: event.Version, Op: event.OpModify, Kind: ne.Kind, UUID: ne.UUID, DN: ne.DN,
			Old: old.Attrs, New: ne.Attrs}, true
	}
}

// freshModel is the model a fresh start builds from entries.
func freshModel(entries []event.Entry, host string, limit int) *model {
	return buildModel(host, limit, entries)
}

// fullBuildTables is the three table sources a fresh start writes.
func fullBuildTables(entries []event.Entry, host string, limit int) []postmap.Table {
	a, mb, d := freshModel(entries, host, limit).render()
	return []postmap.Table{{Name: DomainMap, Src: d}, {Name: MailboxMap, Src: mb}, {Name: AliasMap, Src: a}}
}

// fullBuild renders the maps and reports a fresh model gives.
func fullBuild(entries []event.Entry) (string, []Report) {
	m := freshModel(entries, "mail.example.org", 3)
	a, mb, d := m.render()
	return string(a) + "##\n" + string(mb) + "##\n" + string(d), m.reports()
}

func reportKeys(rs []Report) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.Message + "\n")
	}
	return b.String()
}

// Incremental maintenance always equals a full rebuild: random directories,
// random change sequences (several changes at once, applied concurrently),
// compared after every step on disk (what postmap built from) and in the
// reports.
func TestPropertyIncrementalEqualsFullRebuild(t *testing.T) {
	t.Parallel()
	pf := testenv.StartPostfix(t)
	seeds, steps := 12, 60
	if testing.Short() {
		seeds, steps = 3, 30
	}
	for seed := 0; seed < seeds; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			g := &randDir{r: rand.New(rand.NewPCG(uint64(seed), 42)), d: newDir()}
			for i := g.r.IntN(40); i > 0; i-- {
				e := g.newEntry()
				g.d.add(e.UUID, e.DN, e.Kind, e.Attrs)
			}
			f := newFixture(t, pf, func(c *Config) { c.HostFQDN = "mail.example.org"; c.ExpansionLimit = 3 })
			if seed%2 == 1 {
				f.h.incrementalMin = 0 // odd seeds: small changes update the databases in place
			}
			f.load(t, g.d.all())
			for step := 0; step < steps; step++ {
				// Up to four changes to distinct entries, handled at once.
				busy := map[string]bool{}
				var evs []event.Event
				for i := 1 + g.r.IntN(4); i > 0; i-- {
					ev, ok := g.change(busy)
					if !ok || busy[ev.UUID] {
						continue
					}
					busy[ev.UUID] = true
					evs = append(evs, ev)
				}
				var wg sync.WaitGroup
				for _, ev := range evs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						f.h.Handle(context.Background(), ev) // invalid addresses give permanent errors; the maps still apply
					}()
				}
				wg.Wait()
				want, wantReports := fullBuild(g.d.all())
				got := f.source(t, AliasMap) + "##\n" + f.source(t, MailboxMap) + "##\n" + f.source(t, DomainMap)
				if seed%2 == 1 {
					// Changed in place: the same table, lines in another
					// order, blanked ones left as comments.
					got, want = strings.Join(sourceLines([]byte(got)), "\n"), strings.Join(sourceLines([]byte(want)), "\n")
				}
				if got != want {
					t.Fatalf("step %d (%d events %v): incremental maps differ from a full rebuild\n--- incremental\n%s\n--- full\n%s",
						step, len(evs), evs, got, want)
				}
				for _, name := range []string{AliasMap, MailboxMap, DomainMap} {
					db, err := dumpTable(pf, f.table(name))
					if err != nil {
						t.Fatal(err)
					}
					if src := sourceLines([]byte(f.source(t, name))); !eq(db, src) {
						t.Fatalf("step %d: %s database (%d entries) differs from its source (%d)", step, name, len(db), len(src))
					}
				}
				if a, b := reportKeys(f.h.Reports()), reportKeys(wantReports); a != b {
					t.Fatalf("step %d: reports differ\n--- incremental\n%s--- full\n%s", step, a, b)
				}
			}
			// And a real postmap lookup agrees with the source.
			for _, line := range sourceLines([]byte(f.source(t, AliasMap))) {
				k, v, _ := strings.Cut(line, " ")
				if got := f.lookup(t, AliasMap, k); !eq(got, splitValues(v)) {
					t.Fatalf("postmap -q %s = %v, source says %s", k, got, v)
				}
			}
			if left, _ := filepath.Glob(filepath.Join(f.cfg.Dir, ".*")); len(left) > 0 {
				t.Errorf("temp files left: %v", left)
			}
		})
	}
}
