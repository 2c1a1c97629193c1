package homeserver_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/dovecotadm"
	"mailsync/event"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
	"mailsync/listener"
)

// mailHost is one mail host of a multi-host test: its own Dovecot, map dir
// and handlers, fed by its own runner from the shared JetStream.
type mailHost struct {
	fqdn string
	dc   *testenv.Dovecot
	adm  *dovecotadm.Client
	maps *mapHost
	mbox *mailbox.Handler
}

func startMailHost(t *testing.T, ldap *testenv.Slapd, pf *testenv.Postfix, fqdn string, del bool) *mailHost {
	t.Helper()
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: fqdn})
	adm, err := dovecotadm.New(dc.DoveadmURL, dc.APIKey, dovecotadm.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	mb, err := mailbox.New(mailbox.Config{Host: fqdn, MailHome: dc.MailHome, Rename: true, Delete: del,
		StateDir: t.TempDir(), UID: -1, GID: -1},
		adm, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), mailbox.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	return &mailHost{fqdn: fqdn, dc: dc, adm: adm, maps: newMapHost(t, pf, fqdn), mbox: mb}
}

func (m *mailHost) hasMailbox(addr string) bool {
	_, err := os.Stat(m.dc.Home(addr))
	return err == nil
}

// TestTwoHosts walks the home-server rows of reference §1.3 on two mail
// hosts at once (one slapd, one JetStream, one listener, a worker per host
// with the mailbox and homeserver handlers, delete=yes): after each change,
// which host keeps a mailbox and what each host's transport map says.
func TestTwoHosts(t *testing.T) {
	t.Parallel()
	const a, b = "a.example.org", "b.example.org"
	ldap := testenv.StartSlapd(t)
	pf := testenv.StartPostfix(t)
	hosts := testenv.StartHosts(t, ldap)
	ha, hb := startMailHost(t, ldap, pf, a, true), startMailHost(t, ldap, pf, b, true)
	hosts.StartListener("listener", listener.Hooks{})
	hosts.StartRunner(a, ha.mbox, ha.maps.h)
	hosts.StartRunner(b, hb.mbox, hb.maps.h)

	home := func(h string) map[string][]string {
		if h == "" {
			return map[string][]string{event.AttrHomeServer: nil}
		}
		return map[string][]string{event.AttrHomeServer: {h}}
	}
	addrs := []string{"one@example.org", "two@example.org", "three@example.org", "trois@example.org"}
	// want: per address, the hosts with a mailbox ("a", "b", "ab", "") and
	// the transport entry on a and on b ("" none, else the smtp:[] host).
	type want struct{ boxes, onA, onB string }
	// check waits until every host shows w: a change is published a moment
	// after the LDAP write, so settling alone could look too early.
	check := func(step string, w map[string]want) {
		t.Helper()
		testenv.Eventually(t, 30*time.Second, func() error {
			hosts.Settled(t)
			ta, tb := ha.maps.lookup(t, addrs...), hb.maps.lookup(t, addrs...)
			var bad []string
			for _, addr := range addrs {
				x := w[addr]
				boxes := ""
				if ha.hasMailbox(addr) {
					boxes += "a"
				}
				if hb.hasMailbox(addr) {
					boxes += "b"
				}
				route := func(h string) string {
					if h == "" {
						return ""
					}
					return "smtp:[" + h + "]"
				}
				if boxes != x.boxes || ta[addr] != route(x.onA) || tb[addr] != route(x.onB) {
					bad = append(bad, fmt.Sprintf("%s: %s has mailboxes on %q, transport a=%q b=%q; want mailboxes on %q, a=%q b=%q",
						step, addr, boxes, ta[addr], tb[addr], x.boxes, route(x.onA), route(x.onB)))
				}
			}
			if len(bad) > 0 {
				return errors.New(strings.Join(bad, "\n"))
			}
			return nil
		})
	}

	// (1) created with home a: a creates; b routes to a.
	one := ldap.AddUser(t, "one", "one@example.org", home(a))
	// (1) created without home server: every host creates; no routes.
	two := ldap.AddUser(t, "two", "two@example.org", nil)
	three := ldap.AddUser(t, "three", "three@example.org", home(a))
	check("created", map[string]want{
		"one@example.org":   {"a", "", a},
		"two@example.org":   {"ab", "", ""},
		"three@example.org": {"a", "", a},
	})

	// (2) on a, (5) on b: moved from a to b; b creates an empty mailbox,
	// a deletes (delete=yes); both maps change.
	ldap.Modify(t, one, home(b))
	// (2) on b: home server set from empty to a deletes on every other host.
	ldap.Modify(t, two, home(a))
	check("moved", map[string]want{
		"one@example.org":   {"b", b, ""},
		"two@example.org":   {"a", "", a},
		"three@example.org": {"a", "", a},
	})
	// Mail follows: b accepts one over LMTP, a refuses it (a's Postfix
	// relays it to smtp:[b]).
	hb.dc.Deliver(t, "one@example.org", "after the move")
	if err := ha.dc.TryDeliver("one@example.org", "must not land on a"); err == nil {
		t.Errorf("a accepted mail for one, homed on b")
	}

	// (5) on b, (6) on a: home server cleared; every host has it again.
	ldap.Modify(t, two, home(""))
	// (2) on a, (5) on b with the address changed at the same time: a
	// deletes the old, b creates the new, empty.
	ldap.Modify(t, three, map[string][]string{event.AttrHomeServer: {b}, event.AttrPrimaryAddress: {"trois@example.org"}})
	check("cleared and moved with a new address", map[string]want{
		"one@example.org":   {"b", b, ""},
		"two@example.org":   {"ab", "", ""},
		"trois@example.org": {"b", b, ""},
	})

	// (2): address removed, and user deleted, on the responsible host.
	ldap.Modify(t, one, map[string][]string{event.AttrPrimaryAddress: nil})
	ldap.Delete(t, three)
	ldap.Delete(t, two)
	check("removed", map[string]want{})
}

// TestFailoverEveryHost kills the active listener (no lease release) during
// a burst of 1,000 new users homed on a, b, c or nowhere; the standby takes
// over and every change is applied on both hosts' transport maps.
// Transport maps only: 1,000 mailboxes on two Dovecots would not add to
// what the failover shows and would load the shared CPU.
func TestFailoverEveryHost(t *testing.T) {
	t.Parallel()
	const a, b, c = "a.example.org", "b.example.org", "c.example.org"
	ldap := testenv.StartSlapd(t)
	pf := testenv.StartPostfix(t)
	hosts := testenv.StartHosts(t, ldap)
	ma, mb := newMapHost(t, pf, a), newMapHost(t, pf, b)
	hosts.StartRunner(a, ma.h)
	hosts.StartRunner(b, mb.h)
	hosts.StartListener("one", listener.Hooks{KeepLeaseOnExit: true})
	testenv.Eventually(t, 10*time.Second, func() error {
		if len(hosts.Active()) != 1 {
			return errors.New("no active listener yet")
		}
		return nil
	})
	hosts.StartListener("two", listener.Hooks{})

	const n, killAt = 1000, 300
	homes := []string{"", a, b, c}
	addrs := make([]string, n)
	for i := range n {
		if i == killAt {
			hosts.StopListener("one")
		}
		addrs[i] = fmt.Sprintf("u%04d@example.org", i)
		var extra map[string][]string
		if h := homes[i%len(homes)]; h != "" {
			extra = map[string][]string{event.AttrHomeServer: {h}}
		}
		ldap.AddUser(t, fmt.Sprintf("u%04d", i), addrs[i], extra)
		time.Sleep(4 * time.Millisecond) // the burst outlasts the takeover
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		if act := hosts.Active(); len(act) != 1 || act[0] != "two" {
			return fmt.Errorf("active listeners %v, want [two]", act)
		}
		return nil
	})
	testenv.Eventually(t, 30*time.Second, func() error {
		info, err := hosts.Bus.Stream.Info(context.Background())
		if err != nil {
			return err
		}
		if info.State.Msgs < n {
			return fmt.Errorf("%d events in the stream, want %d", info.State.Msgs, n)
		}
		return nil
	})
	hosts.Settled(t)
	for _, m := range []*mapHost{ma, mb} {
		self := ma == m
		got := m.lookup(t, addrs...)
		wrong := 0
		for i, addr := range addrs {
			h := homes[i%len(homes)]
			want := ""
			if h != "" && !(self && h == a) && !(!self && h == b) {
				want = "smtp:[" + h + "]"
			}
			if got[addr] != want {
				wrong++
				if wrong <= 5 {
					t.Errorf("map of %s: %s -> %q, want %q", m.table(), addr, got[addr], want)
				}
			}
		}
		if wrong > 0 {
			t.Errorf("map of %s: %d of %d addresses wrong", m.table(), wrong, n)
		}
	}
}
