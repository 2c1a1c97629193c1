package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"mailsync/runner"
	"mailsync/stream"
)

// DeadLetter is a dead letter and the subject it was recorded on.
type DeadLetter struct {
	Subject string
	runner.DeadLetter
}

// DeadLetters reads every dead letter in the order recorded.
func DeadLetters(t testing.TB, bus *stream.Bus) []DeadLetter {
	t.Helper()
	ctx := context.Background()
	info, err := bus.Dead.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []DeadLetter
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := bus.Dead.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		dl := DeadLetter{Subject: m.Subject}
		if err := json.Unmarshal(m.Data, &dl.DeadLetter); err != nil {
			t.Fatalf("decode dead letter %d: %v", seq, err)
		}
		out = append(out, dl)
	}
	return out
}
