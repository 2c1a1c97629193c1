package listener_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/listener"
)

// TestRefreshInterruptedLosesNothing stops slapd in the middle of the first
// refresh, after one batch was published and while later entries were read
// but not yet published, then starts it again: every entry still arrives.
func TestRefreshInterruptedLosesNothing(t *testing.T) {
	const users = 20000
	ldif := testenv.GenerateLDIF(t, "dc=example,dc=org", testenv.DirectoryShape{Users: users})
	slapd := testenv.StartSlapdWith(t, testenv.SlapdOptions{Preload: ldif})
	bus := testenv.StartNATS(t).Bus(t)
	var once sync.Once
	restarted := make(chan struct{})
	hooks := listener.Hooks{AfterPublish: func() error {
		once.Do(func() {
			slapd.Stop(t)
			go func() {
				time.Sleep(300 * time.Millisecond)
				slapd.Start(t)
				close(restarted)
			}()
		})
		return nil
	}}
	l := listener.New(listener.Config{URL: slapd.URL, BindDN: slapd.AdminDN, BindPassword: slapd.AdminPW,
		BaseDN: slapd.BaseDN, BatchSize: 100, MaxBackoff: 200 * time.Millisecond},
		bus, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), hooks)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-restarted
	testenv.Eventually(t, 30*time.Second, func() error {
		info, err := bus.Stream.Info(context.Background())
		if err != nil {
			return err
		}
		if s := l.Status(); s.Refreshing || info.State.Msgs < users {
			return fmt.Errorf("%d events in the stream, want %d (refreshing %v)", info.State.Msgs, users, s.Refreshing)
		}
		return nil
	})
	seen := map[string]bool{}
	info, _ := bus.Stream.Info(context.Background())
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := bus.Stream.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		ev := decode(t, m.Data)
		if ev.Op != event.OpAdd {
			t.Fatalf("event %d: %s %s, want only adds", seq, ev.Op, ev.DN)
		}
		seen[ev.UUID] = true
	}
	if len(seen) != users {
		t.Fatalf("%d distinct entries published, want %d", len(seen), users)
	}
}

func decode(t *testing.T, data []byte) event.Event {
	t.Helper()
	var ev event.Event
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatalf("decode event: %v", err)
	}
	return ev
}
