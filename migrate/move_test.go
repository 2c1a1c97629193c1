package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/rs/zerolog"

	"mailsync/dovecotadm"
	"mailsync/event"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/migrate"
)

// moveHost is a mail host with move_on_homeserver_change=yes: its own
// Dovecot (doveadm tcp listener, the passwd-file userdb for doveadm), a
// Mover and a mailbox handler (delete=yes).
type moveHost struct {
	fqdn  string
	dc    *testenv.Dovecot
	adm   *dovecotadm.Client
	mover *migrate.Mover
	mbox  *mailbox.Handler
}

// steps records, in order, the steps a host's mover and mailbox handler
// pass, and runs a test's action at one of them.
type steps struct {
	mu   sync.Mutex
	seen []string
	on   map[string]func() error
}

func (s *steps) at(step string) error {
	s.mu.Lock()
	s.seen = append(s.seen, step)
	f := s.on[step]
	delete(s.on, step)
	s.mu.Unlock()
	if f != nil {
		return f()
	}
	return nil
}

// When runs f once, at step; its error ends the operation there, as a
// crash would.
func (s *steps) When(step string, f func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.on == nil {
		s.on = map[string]func() error{}
	}
	s.on[step] = f
}

func (s *steps) Seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

// startMoveHosts starts two such hosts, each the other's peer.
func startMoveHosts(t testing.TB, ldap *testenv.Slapd, sa, sb *steps) (a, b *moveHost) {
	t.Helper()
	pw := fmt.Sprintf("doveadm-%d", time.Now().UnixNano())
	hosts := []*moveHost{{fqdn: "a.example.org"}, {fqdn: "b.example.org"}}
	for _, h := range hosts {
		h.dc = testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: h.fqdn, DoveadmPassword: pw, MovingUserdb: true})
		var err error
		h.adm, err = dovecotadm.New(h.dc.DoveadmURL, h.dc.APIKey, dovecotadm.WithTimeout(10*time.Second),
			dovecotadm.WithSyncTimeout(5*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	for i, h := range hosts {
		other := hosts[1-i]
		st := []*steps{sa, sb}[i]
		state := t.TempDir()
		var err error
		h.mover, err = migrate.New(migrate.Config{Host: h.fqdn, StateDir: state, Userdb: h.dc.MovingPasswd,
			Local: h.adm, Peers: map[string]migrate.Peer{other.fqdn: {Doveadm: other.adm, Dsync: "tcp:" + other.dc.DoveadmTCP}}},
			log, migrate.Hooks{At: st.at})
		if err != nil {
			t.Fatal(err)
		}
		h.mbox, err = mailbox.New(mailbox.Config{Host: h.fqdn, MailHome: h.dc.MailHome, Rename: true, Delete: true,
			Folders: []string{"Spam"}, StateDir: state, UID: -1, GID: -1, MoveOnHomeChange: true, Mover: h.mover},
			h.adm, log, mailbox.Hooks{At: st.at})
		if err != nil {
			t.Fatal(err)
		}
	}
	return hosts[0], hosts[1]
}

func (h *moveHost) hasHome(addr string) bool {
	_, err := os.Stat(h.dc.Home(addr))
	return err == nil
}

// fill gives addr n messages in INBOX (LMTP) and m in a folder Work (IMAP
// APPEND), the first of each flagged.
func fill(t *testing.T, dc *testenv.Dovecot, addr string, n, m int) {
	t.Helper()
	for i := range n {
		dc.Deliver(t, addr, fmt.Sprintf("inbox %d", i))
	}
	c, err := dc.IMAPReader().DialMaster(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Create("Work", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	for i := range m {
		msg := fmt.Sprintf("From: x@example.org\r\nTo: %s\r\nSubject: work %d\r\n\r\nwork %d\r\n", addr, i, i)
		cmd := c.Append("Work", int64(len(msg)), nil)
		cmd.Write([]byte(msg))
		cmd.Close()
		if _, err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	for _, box := range []string{"INBOX", "Work"} {
		if _, err := c.Select(box, nil).Wait(); err != nil {
			t.Fatal(err)
		}
		if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}, Silent: true}, nil).Close(); err != nil {
			t.Fatal(err)
		}
	}
	c.Logout().Wait()
}

// TestMoveOnHomeServerChange moves users from host a to host b with
// move_on_homeserver_change=yes and delete=yes (two Dovecots, two workers,
// one slapd, one JetStream): every folder and message, flags included, is
// readable on b over IMAP, also one delivered to b during the move; a's
// home goes only after the copy was verified; with b's Dovecot down the
// move waits and completes once it is back.
func TestMoveOnHomeServerChange(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	hosts := testenv.StartHosts(t, ldap)
	var sa, sb steps
	a, b := startMoveHosts(t, ldap, &sa, &sb)
	hosts.StartListener("listener", listener.Hooks{})
	hosts.StartRunner(a.fqdn, a.mbox)
	hosts.StartRunner(b.fqdn, b.mbox)
	homeA := map[string][]string{event.AttrHomeServer: {a.fqdn}}
	homeB := map[string][]string{event.AttrHomeServer: {b.fqdn}}

	t.Run("moved", func(t *testing.T) {
		const u = "one@example.org"
		var dn string
		hosts.Apply(t, func() { dn = ldap.AddUser(t, "one", u, homeA) })
		fill(t, a.dc, u, 5, 3)
		before := a.dc.MailboxSummary(t, u)

		// Mail for u reaches b while a copies: the transport map already
		// routes it there. At verification a's home must still be there.
		sa.When("moveaway:resolvable", func() error {
			b.dc.Deliver(t, u, "delivered to b during the move")
			return nil
		})
		// Then a "crash" right after verification: the retry finds the
		// record, copies nothing again, and goes on to the delete.
		homeAtVerify := false
		sa.When("moveaway:verified", func() error {
			homeAtVerify = a.hasHome(u)
			return errors.New("crash after verification")
		})
		hosts.Apply(t, func() { ldap.Modify(t, dn, homeB) })

		after := b.dc.MailboxSummary(t, u)
		want := before
		in := want["INBOX"]
		in.Messages++
		want["INBOX"] = in
		for box, w := range want {
			if got := after[box]; got != w {
				t.Errorf("b: %s has %+v, want %+v (a had %+v)", box, got, w, before[box])
			}
		}
		if a.hasHome(u) {
			t.Errorf("a still has the home of %s (delete=yes)", u)
		}
		if !homeAtVerify {
			t.Errorf("a's home of %s was gone when the copy was verified", u)
		}
		order := sa.Seen()
		iv, id := slices.Index(order, "moveaway:verified"), slices.Index(order, "delete:intent")
		if iv < 0 || id < 0 || iv > id {
			t.Errorf("a's steps %v: want moveaway:verified before delete:intent", order)
		}
		for _, step := range []string{"moveaway:synced", "moveaway:verified", "delete:home-trashed"} {
			if n := count(order, step); n != 1 {
				t.Errorf("a passed %s %d times, want once (steps %v)", step, n, order)
			}
		}
		if err := a.dc.TryDeliver(u, "must not land on a"); err == nil {
			t.Errorf("a accepted mail for %s, homed on b", u)
		}
		if data, _ := os.ReadFile(a.dc.MovingPasswd); strings.Contains(string(data), u) {
			t.Errorf("a's moving userdb still lists %s:\n%s", u, data)
		}
		if p := a.mover.Pending(); len(p) != 0 {
			t.Errorf("a: moves pending after the move: %+v", p)
		}
	})

	t.Run("new home down", func(t *testing.T) {
		const u = "two@example.org"
		var dn string
		hosts.Apply(t, func() { dn = ldap.AddUser(t, "two", u, homeA) })
		fill(t, a.dc, u, 3, 2)
		before := a.dc.MailboxSummary(t, u)

		seen := len(sa.Seen())
		b.dc.Stop(t)
		ldap.Modify(t, dn, homeB)
		// The move begins, then waits for b: nothing is deleted.
		testenv.Eventually(t, 20*time.Second, func() error {
			if p := a.mover.Pending(); len(p) != 1 || p[0].User != u {
				return fmt.Errorf("a: moves pending %+v, want the one of %s", p, u)
			}
			return nil
		})
		time.Sleep(2 * time.Second) // a few retries against b down
		if !a.hasHome(u) {
			t.Fatalf("a deleted the home of %s while b was down", u)
		}
		if slices.Contains(sa.Seen()[seen:], "moveaway:verified") {
			t.Fatalf("a verified a copy of %s while b was down", u)
		}
		b.dc.Start(t)
		hosts.Settled(t)

		after := b.dc.MailboxSummary(t, u)
		for box, w := range before {
			if got := after[box]; got != w {
				t.Errorf("b: %s has %+v, want %+v", box, got, w)
			}
		}
		if a.hasHome(u) {
			t.Errorf("a still has the home of %s after the move completed", u)
		}
		if p := a.mover.Pending(); len(p) != 0 {
			t.Errorf("a: moves pending after the move: %+v", p)
		}
	})
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}
