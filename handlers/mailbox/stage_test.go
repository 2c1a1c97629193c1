package mailbox_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/handlers/mailbox"
)

// gatedDoveadm makes the homes it is asked for once gate is closed.
type gatedDoveadm struct {
	gate  chan struct{}
	spool string
}

func (g *gatedDoveadm) create(ctx context.Context, user string) error {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	local, domain, _ := mailbox.ValidateAddress(user)
	return os.MkdirAll(filepath.Join(g.spool, domain, local, "Maildir"), 0o700)
}

func (g *gatedDoveadm) Kick(context.Context, string) error { return nil }
func (g *gatedDoveadm) FlushAuthCache(context.Context, ...string) (int, error) {
	return 0, nil
}
func (g *gatedDoveadm) CreateMailbox(ctx context.Context, user string, _ ...string) error {
	return g.create(ctx, user)
}
func (g *gatedDoveadm) CreateNewMailbox(ctx context.Context, user string, _ ...string) error {
	return g.create(ctx, user)
}
func (g *gatedDoveadm) SetACL(context.Context, string, string, string, []string) error { return nil }

// TestStageWaitsForRoom: with StageQueue staged events waiting for Dovecot,
// the next Stage waits (holding the runner's lane, so the consumer, and
// the burst stays in the stream) until one of them has converged; then
// every one completes.
func TestStageWaitsForRoom(t *testing.T) {
	spool := t.TempDir()
	adm := &gatedDoveadm{gate: make(chan struct{}), spool: spool}
	h, err := mailbox.New(mailbox.Config{Host: host, MailHome: spool + "/%Ld/%Ln", StateDir: t.TempDir(), UID: -1, GID: -1},
		adm, zerolog.Nop(), mailbox.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	ev := func(i int) event.Event {
		return event.Event{V: 1, Op: event.OpAdd, Kind: event.KindUser, UUID: fmt.Sprintf("uuid-%05d", i),
			DN:  fmt.Sprintf("uid=s%05d,dc=example,dc=org", i),
			New: map[string][]string{event.AttrPrimaryAddress: {fmt.Sprintf("s%05d@example.org", i)}}}
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, mailbox.StageQueue+1)
	stage := func(i int) error {
		wait, err := h.Stage(ctx, ev(i))
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := wait(ctx); err != nil {
				errs <- fmt.Errorf("entry %d: %w", i, err)
			}
		}()
		return nil
	}
	for i := range mailbox.StageQueue {
		if err := stage(i); err != nil {
			t.Fatal(err)
		}
	}
	staged := make(chan error, 1)
	go func() { staged <- stage(mailbox.StageQueue) }()
	select {
	case err := <-staged:
		t.Fatalf("event %d staged with %d waiting for Dovecot (%v); want it to wait for room", mailbox.StageQueue+1, mailbox.StageQueue, err)
	case <-time.After(300 * time.Millisecond):
	}
	close(adm.gate)
	select {
	case err := <-staged:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting Stage did not return once Dovecot answered")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range mailbox.StageQueue + 1 {
		if _, err := os.Stat(filepath.Join(spool, "example.org", fmt.Sprintf("s%05d", i), mailbox.MarkerFile)); err != nil {
			t.Errorf("entry %d: %v", i, err)
		}
	}
}
