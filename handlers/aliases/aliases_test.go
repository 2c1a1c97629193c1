package aliases

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailsync/event"
	"mailsync/fault"
	"mailsync/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// UCS test 35_mail_to_nested_groups and 23_mail_to_ldap_group: g3 ∋ {g1,
// g2}; a member without an address; members added and removed take effect
// on the next lookup once Handle returned.
func TestNestedGroups(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil, nil)
	d := newDir()
	d.user("u0", "u0@example.org", nil)
	d.user("u1", "u1@example.org", nil)
	d.user("u2", "u2@example.org", nil)
	d.user("nomail", "", nil)
	d.group("g1", "g1@example.org", []string{userDN("u0")}, nil)
	g2 := d.group("g2", "g2@example.org", []string{userDN("u1"), userDN("u2"), userDN("nomail")}, nil)
	g3 := d.group("g3", "g3@example.org", []string{groupDN("g1"), groupDN("g2")}, nil)
	f.load(t, d.all())

	want := map[string][]string{
		"g1@example.org": {"u0@example.org"},
		"g2@example.org": {"u1@example.org", "u2@example.org"},
		"g3@example.org": {"u0@example.org", "u1@example.org", "u2@example.org"},
	}
	for k, v := range want {
		if got := f.lookup(t, AliasMap, k); !eq(got, v) {
			t.Errorf("postmap -q %s = %v, want %v", k, got, v)
		}
	}

	// Giving the member without an address one adds it to g2 and g3.
	nm := d.entries["u-nomail"]
	ev, _ := modifyEvent(nm, event.Attrs{event.AttrPrimaryAddress: {"nomail@example.org"}})
	f.handle(t, ev)
	if got := f.lookup(t, AliasMap, "g3@example.org"); !eq(got, []string{"nomail@example.org", "u0@example.org", "u1@example.org", "u2@example.org"}) {
		t.Errorf("after giving nomail an address: g3 = %v", got)
	}

	// A new user appended to g2 reaches g2 and g3 at once.
	u3 := d.user("u3", "u3@example.org", nil)
	f.handle(t, addEvent(u3))
	ev, g2 = modifyEvent(g2, event.Attrs{event.AttrUniqueMember: append(append([]string(nil), g2.Attrs[event.AttrUniqueMember]...), userDN("u3"))})
	f.handle(t, ev)
	for _, k := range []string{"g2@example.org", "g3@example.org"} {
		if got := f.lookup(t, AliasMap, k); !strings.Contains(strings.Join(got, " "), "u3@example.org") {
			t.Errorf("after adding u3 to g2: %s = %v", k, got)
		}
	}
	if got := f.lookup(t, AliasMap, "g1@example.org"); !eq(got, []string{"u0@example.org"}) {
		t.Errorf("g1 changed with g2: %v", got)
	}

	// Removing g1 from g3 drops u0 from g3 only.
	ev, _ = modifyEvent(g3, event.Attrs{event.AttrUniqueMember: {groupDN("g2")}})
	f.handle(t, ev)
	if got := f.lookup(t, AliasMap, "g3@example.org"); strings.Contains(strings.Join(got, " "), "u0@") {
		t.Errorf("after removing g1 from g3: g3 = %v", got)
	}
	if got := f.lookup(t, AliasMap, "g1@example.org"); !eq(got, []string{"u0@example.org"}) {
		t.Errorf("g1 = %v", got)
	}

	// Deleting a user removes it everywhere, and g2's member DN now dangles.
	f.handle(t, deleteEvent(d.entries["u-u1"]))
	if got := f.lookup(t, AliasMap, "g2@example.org"); strings.Contains(strings.Join(got, " "), "u1@") {
		t.Errorf("after deleting u1: g2 = %v", got)
	}
	miss := reportsOf(f.h.Reports(), ReportMissingMember)
	if len(miss) != 1 || miss[0].DNs[0] != groupDN("g2") || miss[0].DNs[1] != userDN("u1") {
		t.Errorf("missing-member reports = %+v", miss)
	}
	if !strings.Contains(f.log.String(), "member "+userDN("u1")) {
		t.Errorf("no warning naming the missing member:\n%s", f.log)
	}
}

// goldenDir covers every kind of entry and rule once.
func goldenDir() *dirBuilder {
	d := newDir()
	d.domain("example.org")
	d.domain("Example.NET")
	d.user("alice", "Alice@Example.org", event.Attrs{event.AttrAlternativeAddress: {"a@example.org", "alice@example.net"}})
	d.user("bob", "bob@example.org", event.Attrs{
		event.AttrForwardAddress: {"bob@elsewhere.test"}, event.AttrForwardCopyToSelf: {"1"}})
	d.user("carol", "carol@example.org", event.Attrs{
		event.AttrForwardAddress: {"carol@elsewhere.test"}, event.AttrForwardCopyToSelf: {"0"},
		event.AttrAlternativeAddress: {"c@example.org"}})
	d.user("dave", "dave@example.org", event.Attrs{event.AttrAlternativeAddress: {"team@example.org"}}) // collides with a group
	d.user("erin", "", event.Attrs{event.AttrAlternativeAddress: {"erin@example.org"}})
	d.user("frank", "frank@example.org", event.Attrs{event.AttrCanonicalRewrite: {"1"}})
	d.user("bad", "bad user@example.org", nil)
	d.group("team", "team@example.org", []string{userDN("alice"), userDN("bob"), userDN("erin"), groupDN("sub")},
		event.Attrs{event.AttrAlternativeAddress: {"crew@example.org"}})
	d.group("sub", "", []string{"UID=carol, OU=People, DC=Example, DC=Org", userDN("ghost")}, nil)
	d.group("empty", "empty@example.org", nil, nil)
	d.list("announce", "announce@example.org", "alice@example.org", "ext@outside.test", "team@example.org")
	d.folder("shared", "shared@example.org", "mail.example.org", "s@example.org")
	d.folder("remote", "remote@example.org", "other.example.org")
	return d
}

func TestGolden(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil, func(c *Config) { c.HostFQDN = "mail.example.org" })
	f.load(t, goldenDir().all())
	var b strings.Builder
	for _, name := range []string{AliasMap, MailboxMap, DomainMap} {
		fmt.Fprintf(&b, "## %s\n%s", name, f.source(t, name))
	}
	b.WriteString("## reports\n")
	for _, r := range f.h.Reports() {
		fmt.Fprintf(&b, "%s: %s\n", r.Kind, r.Message)
	}
	golden := filepath.Join("testdata", "maps.golden")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if b.String() != string(want) {
		t.Errorf("maps differ from %s (go test -update to accept):\n%s", golden, b.String())
	}

	// What Postfix sees, for the rules the golden file encodes.
	for key, want := range map[string][]string{
		"a@example.org":        {"alice@example.org"},
		"team@example.org":     {"alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org"},
		"crew@example.org":     {"alice@example.org", "bob@example.org", "carol@example.org"},
		"bob@example.org":      {"bob@elsewhere.test", "bob@example.org"},
		"carol@example.org":    {"carol@elsewhere.test"},
		"c@example.org":        {"carol@example.org"},
		"erin@example.org":     nil, // no primary, no forward: nothing
		"empty@example.org":    nil,
		"announce@example.org": {"alice@example.org", "ext@outside.test", "team@example.org"},
		"s@example.org":        {"shared@example.org"},
		"frank@example.org":    nil,
	} {
		if got := f.lookup(t, AliasMap, key); !eq(got, want) {
			t.Errorf("postmap -q %s = %v, want %v", key, got, want)
		}
	}
	if got := f.lookup(t, MailboxMap, "shared@example.org"); got == nil {
		t.Error("local shared folder not in the mailbox map")
	}
	if got := f.lookup(t, MailboxMap, "remote@example.org"); got != nil {
		t.Error("remote shared folder in the mailbox map")
	}
	if got := f.lookup(t, DomainMap, "example.net"); got == nil {
		t.Error("domain example.net missing")
	}
}

// A group address that is also a user's alternative address reaches both
// (UCS 47_mailForwardAddress_corner_cases, unionmap); reported once.
func TestCollisionUnionReportedOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil, nil)
	d := newDir()
	d.user("u1", "u1@example.org", nil)
	dave := d.user("dave", "dave@example.org", event.Attrs{event.AttrAlternativeAddress: {"team@example.org"}})
	d.group("team", "team@example.org", []string{userDN("u1")}, nil)
	// B's alternative address is A's primary: both receive.
	d.user("a", "a@example.org", nil)
	d.user("b", "b@example.org", event.Attrs{event.AttrAlternativeAddress: {"a@example.org"}})
	f.load(t, d.all())
	if got := f.lookup(t, AliasMap, "team@example.org"); !eq(got, []string{"dave@example.org", "u1@example.org"}) {
		t.Errorf("team = %v", got)
	}
	if got := f.lookup(t, AliasMap, "a@example.org"); !eq(got, []string{"a@example.org", "b@example.org"}) {
		t.Errorf("a = %v", got)
	}
	// Unrelated changes do not repeat the warning.
	for i := 0; i < 3; i++ {
		ev, ne := modifyEvent(dave, event.Attrs{event.AttrUID: {fmt.Sprint("dave", i)}})
		dave = ne
		f.handle(t, ev)
	}
	coll := reportsOf(f.h.Reports(), ReportCollision)
	if len(coll) != 2 {
		t.Fatalf("collision reports = %+v", coll)
	}
	if n := strings.Count(f.log.String(), "address team@example.org is defined by"); n != 1 {
		t.Errorf("collision logged %d times, want once:\n%s", n, f.log)
	}
}

// A ∋ B ∋ A and a group in itself: every group expands to the union, the
// cycle is reported once, naming its DNs.
func TestCycles(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil, nil)
	d := newDir()
	d.user("u1", "u1@example.org", nil)
	d.user("u2", "u2@example.org", nil)
	d.user("u3", "u3@example.org", nil)
	d.group("a", "a@example.org", []string{userDN("u1"), groupDN("b")}, nil)
	d.group("b", "b@example.org", []string{userDN("u2"), groupDN("a")}, nil)
	d.group("top", "top@example.org", []string{groupDN("b")}, nil)
	self := d.group("self", "self@example.org", []string{groupDN("self"), userDN("u3")}, nil)
	f.load(t, d.all())
	for k, v := range map[string][]string{
		"a@example.org":    {"u1@example.org", "u2@example.org"},
		"b@example.org":    {"u1@example.org", "u2@example.org"},
		"top@example.org":  {"u1@example.org", "u2@example.org"},
		"self@example.org": {"u3@example.org"},
	} {
		if got := f.lookup(t, AliasMap, k); !eq(got, v) {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	cyc := reportsOf(f.h.Reports(), ReportCycle)
	if len(cyc) != 2 || !eq(cyc[0].DNs, []string{groupDN("a"), groupDN("b")}) || !eq(cyc[1].DNs, []string{groupDN("self")}) {
		t.Fatalf("cycle reports = %+v", cyc)
	}
	// Changes elsewhere do not report the cycle again; breaking it clears it.
	f.handle(t, addEvent(d.user("u4", "u4@example.org", nil)))
	ev, _ := modifyEvent(self, event.Attrs{event.AttrUniqueMember: {userDN("u3"), userDN("u4")}})
	f.handle(t, ev)
	if n := strings.Count(f.log.String(), "membership cycle"); n != 1 {
		t.Errorf("cycle logged %d times, want once:\n%s", n, f.log)
	}
	if cyc := reportsOf(f.h.Reports(), ReportCycle); len(cyc) != 1 {
		t.Errorf("after breaking the self-loop: %+v", cyc)
	}
	if got := f.lookup(t, AliasMap, "self@example.org"); !eq(got, []string{"u3@example.org", "u4@example.org"}) {
		t.Errorf("self = %v", got)
	}
}

// A 5,000-member group (nested) is written in full and reported with its
// DN, size and the main.cf.local line; WriteMainCFLocal keeps that line in
// its own block of the file and removes it when no longer needed.
func TestExpansionLimit(t *testing.T) {
	t.Parallel()
	mainCF := filepath.Join(t.TempDir(), "main.cf.local")
	if err := os.WriteFile(mainCF, []byte("# the admin's own\nmessage_size_limit = 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, nil, func(c *Config) { c.WriteMainCFLocal = true; c.MainCFLocal = mainCF })
	d := newDir()
	var half1, half2 []string
	for i := 0; i < 5000; i++ {
		uid := fmt.Sprintf("m%04d", i)
		d.user(uid, uid+"@example.org", nil)
		if i%2 == 0 {
			half1 = append(half1, userDN(uid))
		} else {
			half2 = append(half2, userDN(uid))
		}
	}
	d.group("h1", "", half1, nil)
	d.group("h2", "", half2, nil)
	big := d.group("big", "big@example.org", []string{groupDN("h1"), groupDN("h2")}, nil)
	f.load(t, d.all())
	got := f.lookup(t, AliasMap, "big@example.org")
	if len(got) != 5000 {
		t.Fatalf("big@ resolves to %d addresses, want 5000", len(got))
	}
	lim := reportsOf(f.h.Reports(), ReportExpansionLimit)
	if len(lim) != 1 || lim[0].DNs[0] != groupDN("big") || lim[0].Size != 5000 ||
		!strings.Contains(lim[0].Message, "virtual_alias_expansion_limit = 5000") {
		t.Fatalf("limit reports = %+v", lim)
	}
	if !strings.Contains(f.log.String(), `"main_cf_local":"virtual_alias_expansion_limit = 5000"`) {
		t.Errorf("log lacks the main.cf.local line:\n%s", f.log)
	}
	b, _ := os.ReadFile(mainCF)
	if !strings.HasPrefix(string(b), "# the admin's own\nmessage_size_limit = 0\n") ||
		!strings.Contains(string(b), "\nvirtual_alias_expansion_limit = 5000\n") {
		t.Errorf("main.cf.local:\n%s", b)
	}
	ev, _ := modifyEvent(big, event.Attrs{event.AttrUniqueMember: {userDN("m0001")}})
	f.handle(t, ev)
	if lim := reportsOf(f.h.Reports(), ReportExpansionLimit); len(lim) != 0 {
		t.Errorf("limit still reported: %+v", lim)
	}
	b, _ = os.ReadFile(mainCF)
	if string(b) != "# the admin's own\nmessage_size_limit = 0\n" {
		t.Errorf("main.cf.local after shrinking:\n%s", b)
	}
}

func TestMapTypes(t *testing.T) {
	t.Parallel()
	pf := testenv.StartPostfix(t)
	for _, typ := range []string{"hash", "lmdb", "cdb"} {
		t.Run(typ, func(t *testing.T) {
			pf.RequireMapType(t, typ)
			f := newFixture(t, pf, func(c *Config) { c.MapType = typ })
			f.load(t, goldenDir().all())
			if got := f.lookup(t, AliasMap, "a@example.org"); !eq(got, []string{"alice@example.org"}) {
				t.Errorf("a@ = %v", got)
			}
			if _, err := os.Stat(filepath.Join(f.cfg.Dir, AliasMap+mapSuffix[typ])); err != nil {
				t.Error(err)
			}
			left, _ := filepath.Glob(filepath.Join(f.cfg.Dir, ".*"))
			if len(left) > 0 {
				t.Errorf("temp files left: %v", left)
			}
		})
	}
}

func TestBadEvents(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil, nil)
	f.load(t, nil)
	ctx := t.Context()
	if err := f.h.Handle(ctx, event.Event{Op: event.OpAdd, DN: "uid=x"}); !fault.IsPermanent(err) {
		t.Errorf("event without uuid: %v", err)
	}
	if err := f.h.Handle(ctx, event.Event{Op: "rename", UUID: "x"}); !fault.IsPermanent(err) {
		t.Errorf("unknown op: %v", err)
	}
	d := newDir()
	bad := d.user("bad", "good@example.org", event.Attrs{event.AttrAlternativeAddress: {"two words@example.org"}})
	err := f.h.Handle(ctx, addEvent(bad))
	if !fault.IsPermanent(err) || !strings.Contains(err.Error(), "two words@example.org") {
		t.Errorf("invalid address: %v", err)
	}
	if got := f.lookup(t, MailboxMap, "good@example.org"); got == nil {
		t.Error("the rest of an entry with one bad address was not applied")
	}
	// Deleting an unknown entry is a no-op, as a replayed delete must be.
	if err := f.h.Handle(ctx, deleteEvent(d.user("ghost", "", nil))); err != nil {
		t.Errorf("delete of unknown entry: %v", err)
	}
}

// After a restart the handler rebuilds the maps from the directory index:
// maps left stale by a crash (here: written for another directory) are
// replaced, and temp files from an interrupted write are removed.
func TestRestartRebuilds(t *testing.T) {
	t.Parallel()
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	f1 := newFixture(t, pf, func(c *Config) { c.Dir = dir })
	d := newDir()
	d.user("old", "old@example.org", event.Attrs{event.AttrAlternativeAddress: {"o@example.org"}})
	f1.load(t, d.all())
	f1.h.Close()
	os.WriteFile(filepath.Join(dir, ".virtual_alias.tmp-123"), []byte("half"), 0o600)

	d2 := newDir()
	d2.user("new", "new@example.org", event.Attrs{event.AttrAlternativeAddress: {"n@example.org"}})
	f2 := newFixture(t, pf, func(c *Config) { c.Dir = dir })
	if left, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(left) > 0 {
		t.Errorf("stale temp files kept: %v", left)
	}
	f2.load(t, d2.all())
	if got := f2.lookup(t, AliasMap, "o@example.org"); got != nil {
		t.Errorf("stale entry survived the rebuild: %v", got)
	}
	if got := f2.lookup(t, AliasMap, "n@example.org"); !eq(got, []string{"new@example.org"}) {
		t.Errorf("n@ = %v", got)
	}
}
