package listener_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/stream"
)

// The event tests below run against every directory server the listener
// speaks to: slapd (syncprov) and 389-DS (Content Synchronization plugin).
// 389-DS takes seconds to create, so the package shares one instance
// (started on first use, removed by TestMain) and gives each test its own
// subtree.

var shared389 struct {
	once sync.Once
	dir  string
	ds   *testenv.DS389
	err  error
	tree atomic.Int64
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared389.ds != nil {
		shared389.ds.Close()
	}
	if shared389.dir != "" {
		if code == 0 {
			os.RemoveAll(shared389.dir)
		} else {
			fmt.Fprintf(os.Stderr, "389-DS instance kept in %s\n", shared389.dir)
		}
	}
	os.Exit(code)
}

// ds389 returns a fresh subtree of the package's 389-DS instance.
func ds389(t *testing.T) testenv.LDAPServer {
	t.Helper()
	testenv.Require(t, "dscreate", "389-ds-base")
	testenv.Require(t, "ns-slapd", "389-ds-base")
	shared389.once.Do(func() {
		shared389.dir, shared389.err = os.MkdirTemp("", "mailsync-389ds-")
		if shared389.err != nil {
			return
		}
		var tm testenv.DS389Timings
		shared389.ds, tm, shared389.err = testenv.NewDS389(shared389.dir)
		t.Logf("389-DS: dscreate %s, configure %s, start %s", tm.Create.Round(time.Millisecond),
			tm.Configure.Round(time.Millisecond), tm.Start.Round(time.Millisecond))
	})
	if shared389.err != nil {
		t.Fatalf("start 389-DS: %v", shared389.err)
	}
	return shared389.ds.Tree(t, fmt.Sprintf("t%d", shared389.tree.Add(1)))
}

type directoryServer struct {
	name   string
	flavor listener.Flavor
	start  func(t *testing.T) testenv.LDAPServer
}

var directoryServers = []directoryServer{
	{"slapd", listener.OpenLDAP{}, func(t *testing.T) testenv.LDAPServer { return testenv.StartSlapd(t) }},
	{"389ds", listener.DS389{}, ds389},
}

// forEachServer runs test once per directory server.
func forEachServer(t *testing.T, test func(t *testing.T, r *srvRig)) {
	for _, ds := range directoryServers {
		t.Run(ds.name, func(t *testing.T) { test(t, newSrvRig(t, ds)) })
	}
}

// srvRig is rig for any directory server: a directory, a JetStream and a
// listener following the one into the other, every event collected in order.
type srvRig struct {
	t      *testing.T
	ldap   testenv.LDAPServer
	bus    *stream.Bus
	cfg    listener.Config
	cancel context.CancelFunc
	done   chan error
	l      *listener.Listener

	mu     sync.Mutex
	events []event.Event
}

func newSrvRig(t *testing.T, ds directoryServer) *srvRig {
	t.Helper()
	r := &srvRig{t: t, ldap: ds.start(t)}
	r.bus = testenv.StartNATS(t).Bus(t)
	ep := r.ldap.Endpoint()
	r.cfg = listener.Config{URL: ep.URL, BindDN: ep.AdminDN, BindPassword: ep.AdminPW, BaseDN: ep.BaseDN,
		MaxBackoff: time.Second, Flavor: ds.flavor}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := r.bus.Stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := c.Consume(func(m jetstream.Msg) {
		var ev event.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			t.Errorf("decode event: %v", err)
			return
		}
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return r
}

func (r *srvRig) start(hooks listener.Hooks) {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := zerolog.New(zerolog.NewTestWriter(r.t)).Level(zerolog.WarnLevel)
	r.l = listener.New(r.cfg, r.bus, log, hooks)
	done := make(chan error, 1)
	go func() { done <- r.l.Run(ctx) }()
	r.cancel, r.done = cancel, done
	r.t.Cleanup(r.stop)
}

func (r *srvRig) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

func (r *srvRig) all() []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event.Event(nil), r.events...)
}

// waitCount waits until n events arrived after index from, then a little
// longer, and returns every event after from: a test sees an extra event.
func (r *srvRig) waitCount(from, n int) []event.Event {
	r.t.Helper()
	testenv.Eventually(r.t, 20*time.Second, func() error {
		if have := len(r.all()) - from; have < n {
			return fmt.Errorf("waiting for %d events; have %d", n, have)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	return r.all()[from:]
}

func TestServersEventsCarryOldAndNew(t *testing.T) {
	forEachServer(t, func(t *testing.T, r *srvRig) {
		d := r.ldap
		alice := d.AddUser(t, "alice", "alice@example.org", nil)
		r.start(listener.Hooks{})
		evs := r.waitCount(0, 1)
		if len(evs) != 1 || evs[0].Op != event.OpAdd || evs[0].Kind != event.KindUser || evs[0].New.First(event.AttrPrimaryAddress) != "alice@example.org" {
			t.Fatalf("initial refresh: got %+v", evs)
		}
		uuid := evs[0].UUID

		// Every followed attribute, one modify each.
		changes := []struct{ attr, val string }{
			{event.AttrPrimaryAddress, "alice2@example.org"},
			{event.AttrAlternativeAddress, "al@example.org"},
			{event.AttrForwardAddress, "alice@elsewhere.org"},
			{event.AttrForwardCopyToSelf, "1"},
			{event.AttrHomeServer, "mail.example.org"},
			{event.AttrQuota, "100"},
		}
		n := 1
		for _, c := range changes {
			before := r.all()[n-1]
			d.Modify(t, alice, map[string][]string{c.attr: {c.val}})
			evs = r.waitCount(n, 1)
			ev := evs[0]
			if len(evs) != 1 || ev.Op != event.OpModify || ev.UUID != uuid || ev.New.First(c.attr) != c.val {
				t.Fatalf("modify %s: got %+v", c.attr, evs)
			}
			if !ev.Old.Equal(before.New) {
				t.Fatalf("modify %s: old = %v, want the previous new %v", c.attr, ev.Old, before.New)
			}
			n++
		}
		// A change to an attribute mailsync does not follow is no event.
		d.Modify(t, alice, map[string][]string{"sn": {"Smith"}})

		// modrdn: one event with old_dn, old and new attributes.
		newDN := d.ModRDN(t, alice, "uid=alice.smith", "")
		evs = r.waitCount(n, 1)
		ev := evs[0]
		if len(evs) != 1 || ev.Op != event.OpModify || ev.UUID != uuid || ev.DN != newDN || ev.OldDN != alice ||
			ev.Old.First(event.AttrUID) != "alice" || ev.New.First(event.AttrUID) != "alice.smith" {
			t.Fatalf("modrdn: got %+v, want one modify with old_dn", evs)
		}
		n++

		// Groups and lists: add, modify, delete.
		g := d.AddGroup(t, "staff", "staff@example.org", []string{newDN}, nil)
		list := "cn=announce," + d.GroupDN("x")[len("cn=x,"):]
		d.Add(t, list, map[string][]string{"objectClass": {"univentionMailList"}, "cn": {"announce"},
			"mailPrimaryAddress": {"announce@example.org"}, "univentionMailMember": {"x@ext.org"}})
		d.Modify(t, g, map[string][]string{event.AttrUniqueMember: {}})
		d.Modify(t, list, map[string][]string{event.AttrMailMember: {"x@ext.org", "y@ext.org"}})
		d.Delete(t, g)
		d.Delete(t, list)
		d.Delete(t, newDN)
		evs = r.waitCount(n, 7)
		want := []struct {
			op   event.Op
			kind event.Kind
			dn   string
		}{
			{event.OpAdd, event.KindGroup, g}, {event.OpAdd, event.KindList, list},
			{event.OpModify, event.KindGroup, g}, {event.OpModify, event.KindList, list},
			{event.OpDelete, event.KindGroup, g}, {event.OpDelete, event.KindList, list},
			{event.OpDelete, event.KindUser, newDN},
		}
		if len(evs) != 7 {
			t.Fatalf("got %d events, want 7 (the sn change must be no event): %+v", len(evs), evs)
		}
		for i, w := range want {
			if evs[i].Op != w.op || evs[i].Kind != w.kind || evs[i].DN != w.dn {
				t.Errorf("event %d: got %s %s %s, want %s %s %s", i, evs[i].Op, evs[i].Kind, evs[i].DN, w.op, w.kind, w.dn)
			}
		}
		if len(evs[2].New[event.AttrUniqueMember]) != 0 || len(evs[2].Old[event.AttrUniqueMember]) != 1 {
			t.Errorf("member removal: old %v new %v", evs[2].Old, evs[2].New)
		}
		if len(evs[3].New[event.AttrMailMember]) != 2 || len(evs[3].Old[event.AttrMailMember]) != 1 {
			t.Errorf("list member added: old %v new %v", evs[3].Old, evs[3].New)
		}
		if evs[6].Old.First(event.AttrPrimaryAddress) != "alice2@example.org" || evs[6].New != nil {
			t.Errorf("delete: old %v new %v", evs[6].Old, evs[6].New)
		}
		// Every change has its own Nats-Msg-Id: none was deduplicated away.
		ids := map[string]bool{}
		for _, ev := range r.all() {
			if ids[ev.MsgID()] {
				t.Errorf("two events share the Msg-Id %s", ev.MsgID())
			}
			ids[ev.MsgID()] = true
		}
	})
}

func TestServersMoveToOtherOUIsOneModify(t *testing.T) {
	forEachServer(t, func(t *testing.T, r *srvRig) {
		d := r.ldap
		sales := "ou=sales," + d.Endpoint().BaseDN
		d.Add(t, sales, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"sales"}})
		bob := d.AddUser(t, "bob", "bob@example.org", nil)
		r.start(listener.Hooks{})
		r.waitCount(0, 1)
		newDN := d.ModRDN(t, bob, "uid=bob", sales)
		evs := r.waitCount(1, 1)
		if len(evs) != 1 || evs[0].Op != event.OpModify || evs[0].OldDN != bob || evs[0].DN != newDN {
			t.Fatalf("move to another OU: got %+v, want one modify with old_dn", evs)
		}
	})
}

func TestServersEntryThatStopsMatchingIsDeleted(t *testing.T) {
	forEachServer(t, func(t *testing.T, r *srvRig) {
		d := r.ldap
		carol := d.AddUser(t, "carol", "carol@example.org", nil)
		chris := d.AddUser(t, "chris", "chris@example.org", nil)
		r.start(listener.Hooks{})
		r.waitCount(0, 2)
		notMail := map[string][]string{"objectClass": {"inetOrgPerson", "posixAccount"}, event.AttrPrimaryAddress: {}}
		d.Modify(t, carol, notMail)
		evs := r.waitCount(2, 1)
		if len(evs) != 1 || evs[0].Op != event.OpDelete || evs[0].DN != carol {
			t.Fatalf("objectClass removed: got %+v, want a delete", evs)
		}
		// The same while the listener is away (389-DS's plugin does not
		// report it; the listener's own listing before resuming does).
		r.stop()
		d.Modify(t, chris, notMail)
		r.start(listener.Hooks{})
		evs = r.waitCount(3, 1)
		if len(evs) != 1 || evs[0].Op != event.OpDelete || evs[0].DN != chris {
			t.Fatalf("objectClass removed while stopped: got %+v, want a delete", evs)
		}
	})
}

func TestServersResumeFromCookieAfterStop(t *testing.T) {
	forEachServer(t, func(t *testing.T, r *srvRig) {
		d := r.ldap
		var dns []string
		for i := range 60 {
			dns = append(dns, d.AddUser(t, fmt.Sprintf("u%02d", i), fmt.Sprintf("u%02d@example.org", i), nil))
		}
		g := d.AddGroup(t, "team", "team@example.org", dns[:3], nil)
		g2 := d.AddGroup(t, "old", "old@example.org", dns[:3], nil)
		r.start(listener.Hooks{})
		r.waitCount(0, 62)
		r.stop()
		base := len(r.all())

		// 50 changes while stopped: 19 modifies and a group membership
		// change, 15 modrdns, 10 deletes (one of them a group), 5 adds.
		for i := 0; i < 19; i++ {
			d.Modify(t, dns[i], map[string][]string{event.AttrPrimaryAddress: {fmt.Sprintf("new%02d@example.org", i)}})
		}
		d.Modify(t, g, map[string][]string{event.AttrUniqueMember: dns[:5]})
		for i := 20; i < 35; i++ {
			d.ModRDN(t, dns[i], fmt.Sprintf("uid=r%02d", i), "")
		}
		for i := 35; i < 44; i++ {
			d.Delete(t, dns[i])
		}
		d.Delete(t, g2)
		for i := range 5 {
			d.AddUser(t, fmt.Sprintf("n%02d", i), fmt.Sprintf("n%02d@example.org", i), nil)
		}
		r.start(listener.Hooks{})
		evs := r.waitCount(base, 50)
		count := map[event.Op]int{}
		renames := 0
		for _, ev := range evs {
			count[ev.Op]++
			if ev.OldDN != "" {
				renames++
			}
		}
		if len(evs) != 50 || count[event.OpModify] != 35 || count[event.OpDelete] != 10 || count[event.OpAdd] != 5 || renames != 15 {
			t.Fatalf("after restart: %d events %v, %d modrdns; want 50 = 35 modify (15 modrdn) + 10 delete + 5 add", len(evs), count, renames)
		}
		// What the listener stored is what the directory holds.
		stored, err := stream.LoadEntries(context.Background(), r.bus.Entries)
		if err != nil {
			t.Fatal(err)
		}
		dir := d.Entries(t)
		if len(stored) != len(dir) {
			t.Fatalf("entries bucket holds %d entries, directory %d", len(stored), len(dir))
		}
		for _, e := range dir {
			s, ok := stored[e.UUID]
			if !ok || s.DN != e.DN || !s.Attrs.Equal(e.Attrs) {
				t.Errorf("entry %s: stored %+v, directory %+v", e.DN, s, e)
			}
		}
	})
}

func TestServersCookieNeverAheadOfStream(t *testing.T) {
	forEachServer(t, func(t *testing.T, r *srvRig) {
		d := r.ldap
		r.start(listener.Hooks{})
		d.AddUser(t, "first", "first@example.org", nil)
		r.waitCount(0, 1)
		r.stop()

		// Crash after the next batch is acked, before its KV state and cookie.
		var crashed atomic.Bool
		r.start(listener.Hooks{AfterPublish: func() error {
			if crashed.CompareAndSwap(false, true) {
				return errors.New("injected crash")
			}
			return nil
		}})
		dave := d.AddUser(t, "dave", "dave@example.org", nil)
		testenv.Eventually(t, 10*time.Second, func() error {
			select {
			case err := <-r.done:
				if !errors.Is(err, listener.ErrCrash) {
					return fmt.Errorf("listener ended with %v, want the injected crash", err)
				}
				r.cancel = nil
				return nil
			default:
				return errors.New("listener still running")
			}
		})
		d.Modify(t, dave, map[string][]string{event.AttrPrimaryAddress: {"david@example.org"}})
		r.start(listener.Hooks{})
		evs := r.waitCount(1, 2)
		if len(evs) != 2 || evs[0].Op != event.OpAdd || evs[1].Op != event.OpModify || evs[1].New.First(event.AttrPrimaryAddress) != "david@example.org" {
			t.Fatalf("after crash and restart: %+v; want add dave, modify dave (the replayed add deduplicated)", evs)
		}
	})
}

func TestServersReconnectAfterOutage(t *testing.T) {
	forEachServer(t, func(t *testing.T, r *srvRig) {
		d := r.ldap
		r.start(listener.Hooks{})
		d.AddUser(t, "erin", "erin@example.org", nil)
		r.waitCount(0, 1)
		d.Stop(t)
		time.Sleep(2 * time.Second)
		select {
		case err := <-r.done:
			t.Fatalf("listener exited during the outage: %v", err)
		default:
		}
		d.Start(t)
		d.AddUser(t, "frank", "frank@example.org", nil)
		evs := r.waitCount(1, 1)
		if len(evs) != 1 || evs[0].New.First(event.AttrUID) != "frank" {
			t.Fatalf("after outage: %+v", evs)
		}
	})
}

// 389-DS answers a cookie it cannot resume from (another server, a trimmed
// retro changelog) with e-syncRefreshRequired; the listener then does a full
// refresh and still finds what changed while it was away, deletes included.
func TestDS389UnusableCookieFallsBackToFullRefresh(t *testing.T) {
	r := newSrvRig(t, directoryServers[1])
	d := r.ldap
	a := d.AddUser(t, "keep", "keep@example.org", nil)
	b := d.AddUser(t, "gone", "gone@example.org", nil)
	r.start(listener.Hooks{})
	r.waitCount(0, 2)
	r.stop()
	d.Modify(t, a, map[string][]string{event.AttrPrimaryAddress: {"kept@example.org"}})
	d.Delete(t, b)
	if _, err := r.bus.State.Put(context.Background(), listener.KeyCookie, []byte("localhost:1#cn=nobody:dc=elsewhere:(objectClass=*)#7")); err != nil {
		t.Fatal(err)
	}
	r.start(listener.Hooks{})
	evs := r.waitCount(2, 2)
	got := map[string]event.Op{}
	for _, ev := range evs {
		got[ev.DN] = ev.Op
	}
	if len(evs) != 2 || got[a] != event.OpModify || got[b] != event.OpDelete {
		t.Fatalf("after an unusable cookie: %+v; want modify %s and delete %s", evs, a, b)
	}
}
