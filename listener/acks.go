package listener

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// acker publishes to JetStream and collects the publish acks on an inbox of
// its own, a round (one batch) at a time. It does what nats.go's
// PublishMsgAsync does for the listener's one use, more cheaply: that keeps
// a future with two channels per message and decodes every ack with
// encoding/json, which at two messages per entry was an eighth of a full
// refresh's CPU. Here an ack is read in place; only an error is decoded.
type acker struct {
	nc     *nats.Conn
	sub    *nats.Subscription
	prefix string // replies go to prefix<round>.<index>

	mu     sync.Mutex
	rounds map[uint64]*round
	next   uint64
}

// round is the publishes of one batch.
type round struct {
	id     uint64
	prefix string
	what   string        // what the publishes are, for errors
	done   chan struct{} // closed when over

	mu     sync.Mutex
	names  []string // the DN each publish is about, for errors
	sealed bool     // wait was called: names is complete
	got    int
	seq    uint64
	err    error
	over   bool
}

// finish ends the round; r.mu is held.
func (r *round) finish(err error) {
	if !r.over {
		r.over, r.err = true, err
		close(r.done)
	}
}

func newAcker(nc *nats.Conn) (*acker, error) {
	a := &acker{nc: nc, prefix: nats.NewInbox() + ".", rounds: map[uint64]*round{}}
	sub, err := nc.Subscribe(a.prefix+">", a.handle)
	if err != nil {
		return nil, fmt.Errorf("subscribe to publish acks: %w", err)
	}
	// The acks of a large batch arrive faster than they are handled.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to publish acks: %w", err)
	}
	a.sub = sub
	return a, nil
}

func (a *acker) close() {
	if a != nil {
		a.sub.Unsubscribe()
	}
}

// start begins a round of publishes of what ("event", "state").
func (a *acker) start(what string, size int) *round {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next++
	r := &round{id: a.next, prefix: a.prefix + strconv.FormatUint(a.next, 10) + ".", what: what,
		names: make([]string, 0, size), done: make(chan struct{})}
	a.rounds[r.id] = r
	return r
}

// publish sends msg as the round's next publish, about entry dn.
func (a *acker) publish(r *round, msg *nats.Msg, dn string) error {
	r.mu.Lock()
	msg.Reply = r.prefix + strconv.Itoa(len(r.names))
	r.names = append(r.names, dn)
	r.mu.Unlock()
	if err := a.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish %s of %s: %w", r.what, dn, err)
	}
	return nil
}

// wait returns once every publish of the round is acked, and the highest
// stream sequence among them; or the first error.
func (a *acker) wait(ctx context.Context, r *round) (uint64, error) {
	defer func() {
		a.mu.Lock()
		delete(a.rounds, r.id)
		a.mu.Unlock()
	}()
	r.mu.Lock()
	r.sealed = true
	if r.got == len(r.names) {
		r.finish(nil)
	}
	r.mu.Unlock()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case <-r.done:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-timeout.C:
		r.mu.Lock()
		defer r.mu.Unlock()
		return 0, fmt.Errorf("no ack from jetstream after 30s for %d of %d publishes", len(r.names)-r.got, len(r.names))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seq, r.err
}

// handle takes one ack. A round is over at its first error or once every
// publish is acked; wait may be called before or after.
func (a *acker) handle(m *nats.Msg) {
	rest := strings.TrimPrefix(m.Subject, a.prefix)
	dot := strings.IndexByte(rest, '.')
	if dot < 0 {
		return
	}
	id, err1 := strconv.ParseUint(rest[:dot], 10, 64)
	i, err2 := strconv.Atoi(rest[dot+1:])
	if err1 != nil || err2 != nil {
		return
	}
	a.mu.Lock()
	r := a.rounds[id]
	a.mu.Unlock()
	if r == nil {
		return // a round given up on
	}
	seq, err := parseAck(m)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.over {
		return
	}
	if err != nil {
		name := "?"
		if i >= 0 && i < len(r.names) {
			name = r.names[i]
		}
		r.finish(fmt.Errorf("publish %s of %s: %w", r.what, name, err))
		return
	}
	r.got++
	r.seq = max(r.seq, seq)
	// Until wait seals the round, acks catching up with the publishes
	// sent so far do not end it.
	if r.sealed && r.got == len(r.names) {
		r.finish(nil)
	}
}

var seqField = []byte(`"seq":`)

// parseAck reads a JetStream publish ack: the stream sequence, or the
// error JetStream answered with.
func parseAck(m *nats.Msg) (uint64, error) {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return 0, jetstream.ErrNoStreamResponse
	}
	// The server writes {"stream":"NAME",["domain":"D",]"seq":N[,...]}.
	if bytes.HasPrefix(m.Data, []byte(`{"stream":`)) && !bytes.Contains(m.Data, []byte(`"error"`)) {
		if k := bytes.Index(m.Data, seqField); k > 0 {
			digits := m.Data[k+len(seqField):]
			n := 0
			for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
				n++
			}
			if seq, err := strconv.ParseUint(string(digits[:n]), 10, 64); err == nil {
				return seq, nil
			}
		}
	}
	var resp struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
		Seq    uint64              `json:"seq"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, fmt.Errorf("%w: %q", jetstream.ErrInvalidJSAck, m.Data)
	}
	if resp.Error != nil {
		return 0, resp.Error
	}
	if resp.Stream == "" {
		return 0, fmt.Errorf("%w: %q", jetstream.ErrInvalidJSAck, m.Data)
	}
	return resp.Seq, nil
}
