package aliases

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/internal/testenv"
)

const base = "dc=example,dc=org"

// dirBuilder builds a directory as the listener would store it.
type dirBuilder struct {
	entries map[string]event.Entry // uuid -> entry
	order   []string
}

func newDir() *dirBuilder { return &dirBuilder{entries: map[string]event.Entry{}} }

func (d *dirBuilder) add(uuid, dn string, kind event.Kind, a event.Attrs) event.Entry {
	if _, ok := d.entries[uuid]; !ok {
		d.order = append(d.order, uuid)
	}
	e := event.Entry{UUID: uuid, DN: dn, Kind: kind, Attrs: a}
	d.entries[uuid] = e
	return e
}

func userDN(uid string) string  { return "uid=" + uid + ",ou=people," + base }
func groupDN(cn string) string  { return "cn=" + cn + ",ou=groups," + base }
func listDN(cn string) string   { return "cn=" + cn + ",ou=lists," + base }
func folderDN(cn string) string { return "cn=" + cn + ",ou=folders," + base }

// user adds a mail user; extra attributes override.
func (d *dirBuilder) user(uid, primary string, extra event.Attrs) event.Entry {
	a := event.Attrs{
		event.AttrObjectClass: {"inetOrgPerson", "posixAccount", "univentionMail"},
		event.AttrUID:         {uid},
	}
	if primary != "" {
		a[event.AttrPrimaryAddress] = []string{primary}
	}
	for k, v := range extra {
		a[k] = v
	}
	return d.add("u-"+uid, userDN(uid), event.KindUser, a)
}

func (d *dirBuilder) group(cn, primary string, members []string, extra event.Attrs) event.Entry {
	a := event.Attrs{
		event.AttrObjectClass: {"posixGroup", "univentionGroup"},
		event.AttrCN:          {cn},
	}
	if primary != "" {
		a[event.AttrPrimaryAddress] = []string{primary}
	}
	if len(members) > 0 {
		a[event.AttrUniqueMember] = members
	}
	for k, v := range extra {
		a[k] = v
	}
	return d.add("g-"+cn, groupDN(cn), event.KindGroup, a)
}

func (d *dirBuilder) list(cn, primary string, members ...string) event.Entry {
	return d.add("l-"+cn, listDN(cn), event.KindList, event.Attrs{
		event.AttrObjectClass:    {"univentionMailList"},
		event.AttrCN:             {cn},
		event.AttrPrimaryAddress: {primary},
		event.AttrMailMember:     members,
	})
}

func (d *dirBuilder) folder(cn, primary, home string, alts ...string) event.Entry {
	a := event.Attrs{
		event.AttrObjectClass:    {"univentionMailSharedFolder"},
		event.AttrCN:             {cn},
		event.AttrPrimaryAddress: {primary},
		event.AttrHomeServer:     {home},
	}
	if len(alts) > 0 {
		a[event.AttrAlternativeAddress] = alts
	}
	return d.add("f-"+cn, folderDN(cn), event.KindFolder, a)
}

func (d *dirBuilder) domain(name string) event.Entry {
	return d.add("d-"+name, "cn="+name+",cn=domain,cn=mail,"+base, event.KindDomain, event.Attrs{
		event.AttrObjectClass: {"univentionMailDomainname"},
		event.AttrCN:          {name},
	})
}

func (d *dirBuilder) all() []event.Entry {
	out := make([]event.Entry, 0, len(d.entries))
	for _, u := range d.order {
		if e, ok := d.entries[u]; ok {
			out = append(out, e)
		}
	}
	return out
}

// modify returns the event that turns e into e with attrs changed.
func modifyEvent(old event.Entry, change event.Attrs) (event.Event, event.Entry) {
	n := event.Attrs{}
	for k, v := range old.Attrs {
		n[k] = v
	}
	for k, v := range change {
		if len(v) == 0 {
			delete(n, k)
		} else {
			n[k] = v
		}
	}
	ne := old
	ne.Attrs = n
	return event.Event{V: event.Version, Op: event.OpModify, Kind: old.Kind, UUID: old.UUID, DN: old.DN,
		Old: old.Attrs, New: n, At: time.Now()}, ne
}

func addEvent(e event.Entry) event.Event {
	return event.Event{V: event.Version, Op: event.OpAdd, Kind: e.Kind, UUID: e.UUID, DN: e.DN, New: e.Attrs, At: time.Now()}
}

func deleteEvent(e event.Entry) event.Event {
	return event.Event{V: event.Version, Op: event.OpDelete, Kind: e.Kind, UUID: e.UUID, DN: e.DN, Old: e.Attrs, At: time.Now()}
}

type fixture struct {
	pf  *testenv.Postfix
	h   *Handler
	cfg Config
	log *testenv.LogBuffer
}

func newFixture(t testing.TB, pf *testenv.Postfix, mod func(*Config)) *fixture {
	t.Helper()
	if pf == nil {
		pf = testenv.StartPostfix(t)
	}
	cfg := Config{
		Dir:              t.TempDir(),
		PostmapPath:      pf.Postmap,
		PostfixConfigDir: pf.ConfigDir,
		Coalesce:         2 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	logs := &testenv.LogBuffer{}
	h, err := New(cfg, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &fixture{pf: pf, h: h, cfg: h.cfg, log: logs}
}

func (f *fixture) load(t testing.TB, entries []event.Entry) {
	t.Helper()
	if err := f.h.Load(context.Background(), entries); err != nil {
		t.Fatalf("load: %v", err)
	}
}

func (f *fixture) handle(t testing.TB, ev event.Event) {
	t.Helper()
	if err := f.h.Handle(context.Background(), ev); err != nil {
		t.Fatalf("handle %s %s: %v", ev.Op, ev.DN, err)
	}
}

func (f *fixture) table(name string) string {
	return f.cfg.MapType + ":" + filepath.Join(f.cfg.Dir, name)
}

// lookup queries the alias map as Postfix would, returning the sorted
// values, or nil when the key is absent.
func (f *fixture) lookup(t testing.TB, name, key string) []string {
	t.Helper()
	v, ok := f.pf.Query(t, f.table(name), key)[key]
	if !ok {
		return nil
	}
	return splitValues(v)
}

func splitValues(v string) []string {
	var out []string
	for _, s := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		out = append(out, strings.ToLower(s))
	}
	sort.Strings(out)
	return out
}

func (f *fixture) source(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.cfg.Dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func eq(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func reportsOf(rs []Report, k ReportKind) []Report {
	var out []Report
	for _, r := range rs {
		if r.Kind == k {
			out = append(out, r)
		}
	}
	return out
}
