package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/runner"
)

// TestStatusShowsSkippedEntries: an entry the listener cannot publish (a
// 2 MB value) is listed by `mailsync status` with its DN and attribute, and
// its dead letter counts as the listener's.
func TestStatusShowsSkippedEntries(t *testing.T) {
	ldap := testenv.StartSlapd(t)
	bus := testenv.StartNATS(t).Bus(t)
	big := ldap.AddUser(t, "big", "big@example.org", map[string][]string{
		event.AttrAlternativeAddress: {strings.Repeat("x", 2<<20) + "@example.org"}})
	ldap.AddUser(t, "small", "small@example.org", nil)
	ctx, cancel := context.WithCancel(context.Background())
	l := listener.New(listener.Config{URL: ldap.URL, BindDN: ldap.AdminDN, BindPassword: ldap.AdminPW, BaseDN: ldap.BaseDN},
		bus, zerolog.Nop(), listener.Hooks{})
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 20*time.Second, func() error {
		if len(l.Status().Poison) == 0 || l.Status().Entries != 1 {
			return fmt.Errorf("listener status %+v", l.Status())
		}
		return nil
	})

	var out strings.Builder
	if err := printStatus(ctx, &out, bus); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "SKIPPED entry "+big) || !strings.Contains(out.String(), event.AttrAlternativeAddress) {
		t.Errorf("status does not list %s and its attribute:\n%s", big, out.String())
	}
	var seqs []uint64
	err := eachDead(ctx, bus, func(seq uint64, dl runner.DeadLetter) error {
		if deadConsumer(dl) != listener.DeadHandler || dl.DN != big {
			t.Errorf("dead letter %d by %s for %s", seq, deadConsumer(dl), dl.DN)
		}
		seqs = append(seqs, seq)
		return nil
	})
	if err != nil || len(seqs) != 1 {
		t.Fatalf("dead letters %v, %v; want the listener's one", seqs, err)
	}
	if !strings.Contains(out.String(), "listener") {
		t.Errorf("status has no listener row for its dead letter:\n%s", out.String())
	}
}
