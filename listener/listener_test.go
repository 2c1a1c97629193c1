package listener_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// rig is a slapd, a JetStream and a listener following the one into the
// other, with every published event collected in order.
type rig struct {
	t      *testing.T
	ldap   *testenv.Slapd
	bus    *stream.Bus
	cfg    listener.Config
	cancel context.CancelFunc
	done   chan error
	l      *listener.Listener
	// logs, when set, also gets the listener's log.
	logs io.Writer

	mu     sync.Mutex
	events []event.Event
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{t: t, ldap: testenv.StartSlapd(t)}
	r.bus = testenv.StartNATS(t).Bus(t)
	r.cfg = listener.Config{URL: r.ldap.URL, BindDN: r.ldap.AdminDN, BindPassword: r.ldap.AdminPW, BaseDN: r.ldap.BaseDN, MaxBackoff: time.Second}
	r.collect()
	return r
}

func (r *rig) collect() {
	ctx, cancel := context.WithCancel(context.Background())
	r.t.Cleanup(cancel)
	c, err := r.bus.Stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		r.t.Fatal(err)
	}
	cc, err := c.Consume(func(m jetstream.Msg) {
		var ev event.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			r.t.Errorf("decode event: %v", err)
			return
		}
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(cc.Stop)
}

func (r *rig) start(hooks listener.Hooks) {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := zerolog.New(zerolog.NewTestWriter(r.t)).Level(zerolog.WarnLevel)
	if r.logs != nil {
		log = zerolog.New(io.MultiWriter(zerolog.NewTestWriter(r.t), r.logs)).Level(zerolog.InfoLevel)
	}
	r.l = listener.New(r.cfg, r.bus, log, hooks)
	done := make(chan error, 1)
	go func() { done <- r.l.Run(ctx) }()
	r.cancel, r.done = cancel, done
	r.t.Cleanup(func() { r.stop() })
}

func (r *rig) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

func (r *rig) all() []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event.Event(nil), r.events...)
}

// waitFor waits until the collected events after index from satisfy ok.
func (r *rig) waitFor(from int, what string, ok func([]event.Event) bool) []event.Event {
	r.t.Helper()
	var evs []event.Event
	testenv.Eventually(r.t, 20*time.Second, func() error {
		evs = r.all()[from:]
		if ok(evs) {
			return nil
		}
		return fmt.Errorf("waiting for %s; have %d events", what, len(evs))
	})
	return evs
}

func (r *rig) waitCount(from, n int) []event.Event {
	r.t.Helper()
	return r.waitFor(from, fmt.Sprintf("%d events", n), func(e []event.Event) bool { return len(e) >= n })
}

func TestEventsCarryOldAndNew(t *testing.T) {
	r := newRig(t)
	alice := r.ldap.AddUser(t, "alice", "alice@example.org", nil)
	r.start(listener.Hooks{})
	evs := r.waitCount(0, 1)
	if evs[0].Op != event.OpAdd || evs[0].Kind != event.KindUser || evs[0].New.First(event.AttrPrimaryAddress) != "alice@example.org" {
		t.Fatalf("initial refresh: got %+v", evs[0])
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
		r.ldap.Modify(t, alice, map[string][]string{c.attr: {c.val}})
		evs = r.waitCount(n, 1)
		ev := evs[0]
		if ev.Op != event.OpModify || ev.UUID != uuid || ev.New.First(c.attr) != c.val {
			t.Fatalf("modify %s: got %+v", c.attr, ev)
		}
		if !ev.Old.Equal(before.New) {
			t.Fatalf("modify %s: old = %v, want the previous new %v", c.attr, ev.Old, before.New)
		}
		n++
	}
	// A change to an attribute mailsync does not follow is no event.
	r.ldap.Modify(t, alice, map[string][]string{"sn": {"Smith"}})

	// modrdn: one event with old_dn, old and new attributes.
	newDN := r.ldap.ModRDN(t, alice, "uid=alice.smith", "")
	evs = r.waitCount(n, 1)
	ev := evs[0]
	if ev.Op != event.OpModify || ev.DN != newDN || ev.OldDN != alice || ev.Old.First(event.AttrUID) != "alice" || ev.New.First(event.AttrUID) != "alice.smith" {
		t.Fatalf("modrdn: got %+v", ev)
	}
	n++

	// Groups and lists: add, modify, delete.
	g := r.ldap.AddGroup(t, "staff", "staff@example.org", []string{newDN}, nil)
	list := "cn=announce,ou=groups," + r.ldap.BaseDN
	r.ldap.Add(t, list, map[string][]string{"objectClass": {"univentionMailList"}, "cn": {"announce"},
		"mailPrimaryAddress": {"announce@example.org"}, "univentionMailMember": {"x@ext.org"}})
	r.ldap.Modify(t, g, map[string][]string{event.AttrUniqueMember: {}})
	r.ldap.Modify(t, list, map[string][]string{event.AttrMailMember: {"x@ext.org", "y@ext.org"}})
	r.ldap.Delete(t, g)
	r.ldap.Delete(t, list)
	r.ldap.Delete(t, newDN)
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
	for i, w := range want {
		if evs[i].Op != w.op || evs[i].Kind != w.kind || evs[i].DN != w.dn {
			t.Errorf("event %d: got %s %s %s, want %s %s %s", i, evs[i].Op, evs[i].Kind, evs[i].DN, w.op, w.kind, w.dn)
		}
	}
	if len(evs[2].New[event.AttrUniqueMember]) != 0 || len(evs[2].Old[event.AttrUniqueMember]) != 1 {
		t.Errorf("member removal: old %v new %v", evs[2].Old, evs[2].New)
	}
	if evs[6].Old.First(event.AttrPrimaryAddress) != "alice2@example.org" || evs[6].New != nil {
		t.Errorf("delete: old %v new %v", evs[6].Old, evs[6].New)
	}
	if len(evs) != 7 {
		t.Errorf("got %d events, want 7 (the sn change must be no event): %+v", len(evs), evs[7:])
	}
}

func TestMoveToOtherOUIsOneModify(t *testing.T) {
	r := newRig(t)
	r.ldap.Add(t, "ou=sales,"+r.ldap.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"sales"}})
	bob := r.ldap.AddUser(t, "bob", "bob@example.org", nil)
	r.start(listener.Hooks{})
	r.waitCount(0, 1)
	newDN := r.ldap.ModRDN(t, bob, "uid=bob", "ou=sales,"+r.ldap.BaseDN)
	r.waitCount(1, 1)
	time.Sleep(200 * time.Millisecond)
	evs := r.all()[1:]
	if len(evs) != 1 || evs[0].Op != event.OpModify || evs[0].OldDN != bob || evs[0].DN != newDN {
		t.Fatalf("move to another OU: got %+v, want one modify with old_dn", evs)
	}
}

func TestEntryThatStopsMatchingIsDeleted(t *testing.T) {
	r := newRig(t)
	carol := r.ldap.AddUser(t, "carol", "carol@example.org", nil)
	r.start(listener.Hooks{})
	r.waitCount(0, 1)
	r.ldap.Modify(t, carol, map[string][]string{"objectClass": {"inetOrgPerson", "posixAccount"},
		event.AttrPrimaryAddress: {}})
	evs := r.waitCount(1, 1)
	if evs[0].Op != event.OpDelete || evs[0].DN != carol {
		t.Fatalf("objectClass removed: got %+v, want a delete", evs[0])
	}
}

func TestResumeFromCookieAfterStop(t *testing.T) {
	r := newRig(t)
	var dns []string
	for i := range 60 {
		dns = append(dns, r.ldap.AddUser(t, fmt.Sprintf("u%02d", i), fmt.Sprintf("u%02d@example.org", i), nil))
	}
	r.start(listener.Hooks{})
	r.waitCount(0, 60)
	r.stop()
	base := len(r.all())

	// 50 changes while stopped: 20 modifies, 15 modrdns, 10 deletes, 5 adds.
	for i := 0; i < 20; i++ {
		r.ldap.Modify(t, dns[i], map[string][]string{event.AttrPrimaryAddress: {fmt.Sprintf("new%02d@example.org", i)}})
	}
	for i := 20; i < 35; i++ {
		r.ldap.ModRDN(t, dns[i], fmt.Sprintf("uid=r%02d", i), "")
	}
	for i := 35; i < 45; i++ {
		r.ldap.Delete(t, dns[i])
	}
	for i := range 5 {
		r.ldap.AddUser(t, fmt.Sprintf("n%02d", i), fmt.Sprintf("n%02d@example.org", i), nil)
	}
	r.start(listener.Hooks{})
	r.waitCount(base, 50)
	time.Sleep(300 * time.Millisecond)
	evs := r.all()[base:]
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
}

func TestCookieNeverAheadOfStream(t *testing.T) {
	r := newRig(t)
	r.start(listener.Hooks{})
	r.ldap.AddUser(t, "first", "first@example.org", nil)
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
	dave := r.ldap.AddUser(t, "dave", "dave@example.org", nil)
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
	// Changes made while it is down, then a restart: nothing lost, the
	// replayed event deduplicated.
	r.ldap.Modify(t, dave, map[string][]string{event.AttrPrimaryAddress: {"david@example.org"}})
	r.start(listener.Hooks{})
	r.waitCount(1, 2)
	time.Sleep(300 * time.Millisecond)
	evs := r.all()[1:]
	if len(evs) != 2 || evs[0].Op != event.OpAdd || evs[1].Op != event.OpModify || evs[1].New.First(event.AttrPrimaryAddress) != "david@example.org" {
		t.Fatalf("after crash and restart: %+v; want add dave, modify dave (the replayed add deduplicated)", evs)
	}
}

func TestReconnectsAfterSlapdOutage(t *testing.T) {
	r := newRig(t)
	r.start(listener.Hooks{})
	r.ldap.AddUser(t, "erin", "erin@example.org", nil)
	r.waitCount(0, 1)
	r.ldap.Stop(t)
	outage := 10 * time.Second
	if os.Getenv("MAILSYNC_SHORT_OUTAGE") != "" {
		outage = 2 * time.Second
	}
	time.Sleep(outage)
	select {
	case err := <-r.done:
		t.Fatalf("listener exited during the outage: %v", err)
	default:
	}
	r.ldap.Start(t)
	r.ldap.AddUser(t, "frank", "frank@example.org", nil)
	evs := r.waitCount(1, 1)
	if evs[0].New.First(event.AttrUID) != "frank" {
		t.Fatalf("after outage: %+v", evs[0])
	}
}

func TestMassDeleteGuardHoldsUntilConfirmed(t *testing.T) {
	r := newRig(t)
	for i := range 30 {
		r.ldap.AddUser(t, fmt.Sprintf("m%02d", i), fmt.Sprintf("m%02d@example.org", i), nil)
	}
	r.start(listener.Hooks{})
	r.waitCount(0, 30)
	r.stop()
	r.ldap.Wipe(t) // an empty directory: a restore gone wrong
	r.start(listener.Hooks{})
	testenv.Eventually(t, 10*time.Second, func() error {
		if s := r.l.Status(); s.HeldDeletes != 30 {
			return fmt.Errorf("status shows %d held deletes, want 30", s.HeldDeletes)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	if n := len(r.all()); n != 30 {
		t.Fatalf("%d events after the wipe; the guard must hold the 30 deletes", n-30)
	}
	// A change in between still flows.
	r.ldap.AddUser(t, "late", "late@example.org", nil)
	r.waitCount(30, 1)
	if err := listener.ConfirmDeletes(context.Background(), r.bus); err != nil {
		t.Fatal(err)
	}
	evs := r.waitCount(31, 30)
	for _, ev := range evs {
		if ev.Op != event.OpDelete {
			t.Fatalf("after confirmation: %+v, want deletes", ev)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if s := r.l.Status(); s.HeldDeletes != 0 {
			return fmt.Errorf("%d still held", s.HeldDeletes)
		}
		return nil
	})
}

func TestSmallDeleteIsNotHeld(t *testing.T) {
	r := newRig(t)
	var dns []string
	for i := range 30 {
		dns = append(dns, r.ldap.AddUser(t, fmt.Sprintf("s%02d", i), "", nil))
	}
	r.start(listener.Hooks{})
	r.waitCount(0, 30)
	r.stop()
	for _, dn := range dns[:25] {
		r.ldap.Delete(t, dn) // most of them, but fewer than 20 would not trip; 25 > 20 and > 10%
	}
	r.cfg.ConfirmMassDelete = true // the config switch
	r.start(listener.Hooks{})
	evs := r.waitCount(30, 25)
	for _, ev := range evs {
		if ev.Op != event.OpDelete {
			t.Fatalf("got %+v, want delete", ev)
		}
	}
}
