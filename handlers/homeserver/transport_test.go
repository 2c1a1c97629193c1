package homeserver_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"mailsync/event"
	"mailsync/fault"
	"mailsync/handlers/homeserver"
	"mailsync/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

const here = "mail.example.org"

func attrs(addr, home string) event.Attrs {
	a := event.Attrs{event.AttrObjectClass: {"univentionMail"}, event.AttrUID: {"x"}}
	if addr != "" {
		a[event.AttrPrimaryAddress] = []string{addr}
	}
	if home != "" {
		a[event.AttrHomeServer] = []string{home}
	}
	return a
}

// TestRoute is ldap.transport's filter, reference §3.5:
// (&(mailPrimaryAddress=%s)(univentionMailHomeServer=*)(!(univentionMailHomeServer=<fqdn>))).
func TestRoute(t *testing.T) {
	for _, c := range []struct {
		name, addr, home string
		wantKey, wantTo  string
		wantErr          bool
	}{
		{"no home server: delivered wherever it arrives", "a@example.org", "", "", "", false},
		{"homed here", "a@example.org", here, "", "", false},
		{"homed here, other case", "a@example.org", "MAIL.Example.ORG", "", "", false},
		{"homed here, trailing dot", "a@example.org", "mail.example.org.", "", "", false},
		{"homed here, other case and trailing dot", "a@example.org", "Mail.EXAMPLE.org.", "", "", false},
		{"homed elsewhere, trailing dot dropped", "a@example.org", "MX2.example.org.", "a@example.org", "mx2.example.org", false},
		{"two trailing dots", "a@example.org", "mx2.example.org..", "", "", true},
		{"space around home server", "a@example.org", " mx2.example.org", "", "", true},
		{"space around address, homed here", "a@example.org ", here, "", "", true},
		{"dotdot address, homed here", "../a@example.org", here, "", "", true},
		{"homed elsewhere", "A@Example.org", "mx2.example.org", "a@example.org", "mx2.example.org", false},
		{"home server case folded", "a@example.org", "MX2.example.org", "a@example.org", "mx2.example.org", false},
		{"bare host name is not this host", "a@example.org", "mail", "a@example.org", "mail", false},
		{"no primary address", "", "mx2.example.org", "", "", false},
		{"space in address", "a b@example.org", "mx2.example.org", "", "", true},
		{"bracket in home", "a@example.org", "mx2]x", "", "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			key, to, ok, err := homeserver.Route(attrs(c.addr, c.home), here)
			if (err != nil) != c.wantErr {
				t.Fatalf("err %v, want error %v", err, c.wantErr)
			}
			if ok != (c.wantKey != "") || key != c.wantKey || to != c.wantTo {
				t.Errorf("Route = %q -> %q (%v), want %q -> %q", key, to, ok, c.wantKey, c.wantTo)
			}
		})
	}
}

type mapHost struct {
	pf  *testenv.Postfix
	dir string
	h   *homeserver.Handler
}

func newMapHost(t *testing.T, pf *testenv.Postfix, fqdn string) *mapHost {
	t.Helper()
	dir := t.TempDir()
	h, err := homeserver.New(homeserver.Config{Host: fqdn, Dir: dir, PostmapPath: pf.Postmap, PostfixConfigDir: pf.ConfigDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &mapHost{pf: pf, dir: dir, h: h}
}

func (m *mapHost) table() string { return "hash:" + filepath.Join(m.dir, homeserver.TransportMap) }

// lookup resolves addresses with postmap -q on the host's map.
func (m *mapHost) lookup(t *testing.T, addrs ...string) map[string]string {
	t.Helper()
	return m.pf.Query(t, m.table(), addrs...)
}

// TestLoadGolden: a rebuild from the directory writes the golden map, and
// postmap resolves it; an entry whose values cannot go into a table is left
// out and its event is a permanent error.
func TestLoadGolden(t *testing.T) {
	t.Parallel()
	m := newMapHost(t, testenv.StartPostfix(t), here)
	folder := event.Attrs{event.AttrObjectClass: {"univentionMailSharedFolder"}, event.AttrCN: {"f"},
		event.AttrPrimaryAddress: {"folder@example.org"}, event.AttrHomeServer: {"mx3.example.org"}}
	entries := []event.Entry{
		{UUID: "1", Kind: event.KindUser, Attrs: attrs("alice@example.org", "")},
		{UUID: "2", Kind: event.KindUser, Attrs: attrs("bob@example.org", here)},
		{UUID: "3", Kind: event.KindUser, Attrs: attrs("Carol@example.org", "mx2.example.org")},
		{UUID: "4", Kind: event.KindFolder, Attrs: folder},
		{UUID: "5", Kind: event.KindUser, Attrs: attrs("bad address@example.org", "mx2.example.org")},
	}
	ctx := context.Background()
	if err := m.h.Load(ctx, entries); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(m.dir, homeserver.TransportMap))
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "transport.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("transport map:\n%s\nwant:\n%s", got, want)
	}
	res := m.lookup(t, "alice@example.org", "bob@example.org", "carol@example.org", "CAROL@example.org", "folder@example.org")
	wantRes := map[string]string{"carol@example.org": "smtp:[mx2.example.org]", "CAROL@example.org": "smtp:[mx2.example.org]",
		"folder@example.org": "smtp:[mx3.example.org]"}
	if len(res) != len(wantRes) {
		t.Errorf("postmap -q: %v, want %v", res, wantRes)
	}
	for k, v := range wantRes {
		if res[k] != v {
			t.Errorf("postmap -q %s = %q, want %q", k, res[k], v)
		}
	}
	err = m.h.Handle(ctx, event.Event{Op: event.OpModify, UUID: "5", DN: "uid=bad", New: entries[4].Attrs})
	if !fault.IsPermanent(err) {
		t.Errorf("event with an address that cannot be a key: %v, want a permanent error", err)
	}
}

// TestTransportFollowsDirectory is ucs-test 24_mailHomeServer's expectation
// on one host: mail for a user homed on another host resolves to
// smtp:[thathost] with postmap -q on this host's map, and this host's
// Dovecot refuses it over LMTP, so it is never delivered locally. Every
// later change of address or home server moves the entry; a rebuild from
// the directory gives the same map.
func TestTransportFollowsDirectory(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: here})
	m := newMapHost(t, testenv.StartPostfix(t), here)
	p := testenv.StartPipeline(t, ldap, here, m.h)

	home := func(h string) map[string][]string { return map[string][]string{event.AttrHomeServer: {h}} }
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	bob := ldap.AddUser(t, "bob", "bob@example.org", home("MAIL.example.org"))
	carol := ldap.AddUser(t, "carol", "carol@example.org", home("mx2.example.org"))
	dave := ldap.AddUser(t, "dave", "dave@example.org", nil)
	folder := "cn=shared," + ldap.BaseDN
	ldap.Add(t, folder, map[string][]string{"objectClass": {"univentionMailSharedFolder"}, "cn": {"shared"},
		event.AttrPrimaryAddress: {"shared@example.org"}, event.AttrHomeServer: {"mx2.example.org"}})
	p.Settled(t)

	all := []string{"alice@example.org", "bob@example.org", "carol@example.org", "carol2@example.org", "dave@example.org", "shared@example.org"}
	expect := func(step string, want map[string]string) {
		t.Helper()
		got := m.lookup(t, all...)
		if len(got) != len(want) {
			t.Errorf("%s: postmap -q gives %v, want %v", step, got, want)
			return
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: postmap -q %s = %q, want %q", step, k, got[k], v)
			}
		}
	}
	expect("start", map[string]string{"carol@example.org": "smtp:[mx2.example.org]", "shared@example.org": "smtp:[mx2.example.org]"})
	dc.Deliver(t, "alice@example.org", "local")
	dc.Deliver(t, "bob@example.org", "local")
	if err := dc.TryDeliver("carol@example.org", "must not land here"); err == nil {
		t.Errorf("LMTP on %s accepted mail for carol, homed on mx2", here)
	}

	ldap.Modify(t, dave, home("mx3.example.org"))
	ldap.Modify(t, carol, map[string][]string{event.AttrPrimaryAddress: {"carol2@example.org"}})
	ldap.Modify(t, bob, home("mx2.example.org"))
	ldap.Modify(t, folder, home(here))
	p.Settled(t)
	expect("after changes", map[string]string{"carol2@example.org": "smtp:[mx2.example.org]",
		"dave@example.org": "smtp:[mx3.example.org]", "bob@example.org": "smtp:[mx2.example.org]"})

	ldap.Modify(t, carol, map[string][]string{event.AttrHomeServer: nil})
	ldap.Delete(t, dave)
	p.Settled(t)
	want := map[string]string{"bob@example.org": "smtp:[mx2.example.org]"}
	expect("after clearing and deleting", want)
	incremental, err := os.ReadFile(filepath.Join(m.dir, homeserver.TransportMap))
	if err != nil {
		t.Fatal(err)
	}

	// A rebuild from the directory (a restart) writes the same map.
	fresh := newMapHost(t, m.pf, here)
	if err := fresh.h.Load(context.Background(), ldap.Entries(t)); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := os.ReadFile(filepath.Join(fresh.dir, homeserver.TransportMap))
	if err != nil {
		t.Fatal(err)
	}
	if string(rebuilt) != string(incremental) {
		t.Errorf("rebuilt map:\n%s\nincremental map:\n%s", rebuilt, incremental)
	}
}

// TestPostmapFailure: when postmap fails, the live map stays as it was, no
// temp file is left behind, and the event is retryable; the retry after
// postmap works again writes the change.
func TestPostmapFailure(t *testing.T) {
	t.Parallel()
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	broken := filepath.Join(t.TempDir(), "postmap")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'postmap: fatal: broken on purpose' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := homeserver.Config{Host: here, Dir: dir, PostmapPath: pf.Postmap, PostfixConfigDir: pf.ConfigDir}
	h, err := homeserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ctx := context.Background()
	if err := h.Load(ctx, []event.Entry{{UUID: "1", Attrs: attrs("a@example.org", "mx2.example.org")}}); err != nil {
		t.Fatal(err)
	}
	m := &mapHost{pf: pf, dir: dir, h: h}

	cfg.PostmapPath = broken
	hb, err := homeserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Close() })
	err = hb.Load(ctx, []event.Entry{{UUID: "1", Attrs: attrs("a@example.org", "mx3.example.org")}})
	if err == nil {
		t.Fatal("Load with a failing postmap succeeded")
	}
	err = hb.Handle(ctx, event.Event{Op: event.OpModify, UUID: "1", New: attrs("a@example.org", "mx4.example.org")})
	if !fault.IsRetryable(err) {
		t.Errorf("Handle with a failing postmap: %v, want a retryable error", err)
	}
	if got := m.lookup(t, "a@example.org")["a@example.org"]; got != "smtp:[mx2.example.org]" {
		t.Errorf("live map after failed writes: %q, want the old smtp:[mx2.example.org]", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("map dir holds %v, want transport and transport.db only", names)
	}
	// The redelivered event, with postmap working again.
	if err := h.Handle(ctx, event.Event{Op: event.OpModify, UUID: "1", New: attrs("a@example.org", "mx4.example.org")}); err != nil {
		t.Fatal(err)
	}
	if got := m.lookup(t, "a@example.org")["a@example.org"]; got != "smtp:[mx4.example.org]" {
		t.Errorf("after the retry: %q, want smtp:[mx4.example.org]", got)
	}
}
