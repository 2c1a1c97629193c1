package listener

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
//
// A quiet round goes further: only its first and last publishes ask for an
// ack. JetStream stores one connection's messages to a stream in the order
// they were sent, so when nobody else writes to the stream meanwhile the
// round is complete exactly when the two acks are n-1 sequences apart and
// neither is a duplicate. That count alone cannot see a publish lost while
// another writer's message takes its place, so a round of publishes that
// carry a Nats-Msg-Id (events: `mailsync dead retry` writes to their stream
// too) is also chained: each names the previous publish's id in
// Nats-Expected-Last-Msg-Id, and JetStream refuses it unless that one was
// stored right before it. A publish lost in the middle (refused, dropped
// unanswered, deduplicated) or another writer's message in the round breaks
// the chain there, every later publish is refused, and the last one's ack
// says so: the last publish stored proves the one before it stored just
// before it, and so on back to the first. The entry states carry no id and
// are not chained: the entries bucket has no other writer than the
// listener holding the lease, and for a single writer the count proves as
// much as a chain would. Whatever the acks cannot vouch for (a gap, a
// duplicate, a broken chain) is errGap, and the round is published again
// with every publish acked and nothing chained (round does both; events
// carry their Msg-Id, so those already stored are not stored twice).
// Making and delivering an ack per message was about a third of a full
// refresh's CPU, counting the garbage collection it caused.
type acker struct {
	nc     *nats.Conn
	sub    *nats.Subscription
	prefix string // replies go to prefix<round>.<index>

	mu     sync.Mutex
	rounds map[uint64]*round
	next   uint64

	// gapped, when set, is told of each quiet round published again.
	gapped func(what string, n int)
}

// round is the publishes of one batch.
type round struct {
	id     uint64
	prefix string
	what   string        // what the publishes are, for errors
	done   chan struct{} // closed when over

	// A quiet round of n publishes asks only the first and the last for
	// an ack, and chains those with a Msg-Id (see acker).
	quiet bool
	n     int

	mu          sync.Mutex
	names       []string // the DN each publish is about, for errors
	sealed      bool     // wait was called: names is complete
	got         int
	seq         uint64
	first, last uint64 // a quiet round's acked sequences
	dup         bool   // a quiet round's first or last ack was a duplicate
	err         error
	over        bool
}

// errGap says a quiet round's acks do not prove every publish stored.
var errGap = errors.New("quiet publish round incomplete")

// errCodeWrongLastMsgID is JetStream's error code for a publish whose
// Nats-Expected-Last-Msg-Id does not hold: in a quiet round, a broken chain.
const errCodeWrongLastMsgID = 10070

func chainBroken(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeWrongLastMsgID
}

// expected is the number of acks the round waits for; r.mu is held.
func (r *round) expected() int {
	switch {
	case !r.quiet:
		return len(r.names)
	case len(r.names) != r.n:
		return -1 // fewer publishes than planned: the last asked for none
	case r.n == 1:
		return 1
	default:
		return 2
	}
}

// acked reports whether publish i asks for an ack.
func (r *round) acked(i int) bool {
	return !r.quiet || i == 0 || i == r.n-1
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

// begin starts a round of n publishes of what ("event", "state"), each
// acked or, quiet, only the first and the last (see acker).
func (a *acker) begin(what string, n int, quiet bool) *round {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next++
	r := &round{id: a.next, prefix: a.prefix + strconv.FormatUint(a.next, 10) + ".", what: what,
		quiet: quiet, n: n, names: make([]string, 0, n), done: make(chan struct{})}
	a.rounds[r.id] = r
	return r
}

// round publishes n messages of what, msg(i) giving the i-th and the DN it
// is about, as a quiet round and, if that cannot prove them all stored,
// again with every publish acked. It returns the highest stream sequence
// acked. msg may reuse one message: each is sent before the next is made;
// round sets and clears the chain headers on it.
func (a *acker) round(ctx context.Context, what string, n int, msg func(i int) (*nats.Msg, string, error)) (uint64, error) {
	if n == 0 {
		return 0, nil
	}
	for _, quiet := range []bool{true, false} {
		r := a.begin(what, n, quiet)
		var c chainer
		for i := 0; i < n; i++ {
			m, dn, err := msg(i)
			if err == nil {
				c.link(r, i, m)
				err = a.publish(r, m, dn)
			}
			if err != nil {
				a.forget(r)
				return 0, err
			}
		}
		seq, err := a.wait(ctx, r)
		if quiet && errors.Is(err, errGap) {
			if a.gapped != nil {
				a.gapped(what, n)
			}
			continue
		}
		return seq, err
	}
	panic("unreachable")
}

// chainer sets the header that chains each publish of a quiet round that
// carries a Msg-Id to the one before it (see acker), and clears it from a
// message of a round that is not quiet.
type chainer struct {
	prevID string
	slot   []string // the header value, reused: PublishMsg copies it
}

func (c *chainer) link(r *round, i int, m *nats.Msg) {
	if m.Header == nil {
		c.prevID = ""
		return
	}
	delete(m.Header, jetstream.ExpectedLastMsgIDHeader)
	id, prev := m.Header.Get(jetstream.MsgIDHeader), c.prevID
	c.prevID = id
	if !r.quiet || i == 0 || id == "" || prev == "" {
		return
	}
	if c.slot == nil {
		c.slot = []string{""}
	}
	c.slot[0] = prev
	m.Header[jetstream.ExpectedLastMsgIDHeader] = c.slot
}

// forget drops a round given up on before its wait.
func (a *acker) forget(r *round) {
	a.mu.Lock()
	delete(a.rounds, r.id)
	a.mu.Unlock()
}

// publish sends msg as the round's next publish, about entry dn.
func (a *acker) publish(r *round, msg *nats.Msg, dn string) error {
	r.mu.Lock()
	if i := len(r.names); r.acked(i) {
		msg.Reply = r.prefix + strconv.Itoa(i)
	} else {
		msg.Reply = ""
	}
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
	defer a.forget(r)
	r.mu.Lock()
	r.sealed = true
	switch want := r.expected(); {
	case want < 0:
		r.finish(errGap)
	case r.got == want:
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
		return 0, fmt.Errorf("no ack from jetstream after 30s for %d of %d acked publishes", r.expected()-r.got, r.expected())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil && r.quiet && (r.dup || r.last-r.first != uint64(r.n-1)) {
		return 0, errGap
	}
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
	seq, dup, err := parseAck(m)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.over || i < 0 || !r.acked(i) {
		return
	}
	if err != nil {
		if r.quiet && chainBroken(err) {
			r.finish(errGap)
			return
		}
		name := "?"
		if i >= 0 && i < len(r.names) {
			name = r.names[i]
		}
		r.finish(fmt.Errorf("publish %s of %s: %w", r.what, name, err))
		return
	}
	r.got++
	r.seq = max(r.seq, seq)
	if r.quiet {
		r.dup = r.dup || dup
		if i == 0 {
			r.first = seq
		}
		if i == r.n-1 {
			r.last = seq
		}
	}
	// Until wait seals the round, acks catching up with the publishes
	// sent so far do not end it.
	if r.sealed && r.got == r.expected() {
		r.finish(nil)
	}
}

var (
	seqField = []byte(`"seq":`)
	dupField = []byte(`"duplicate":`)
)

// parseAck reads a JetStream publish ack: the stream sequence and whether
// the message was a duplicate, or the error JetStream answered with.
func parseAck(m *nats.Msg) (seq uint64, dup bool, err error) {
	seq, err = parseAckSeq(m)
	return seq, err == nil && isDuplicate(m.Data), err
}

// isDuplicate reads the ack's "duplicate" field, which the server writes
// as `"duplicate": true` (with a space) and encoding/json without one.
func isDuplicate(data []byte) bool {
	k := bytes.Index(data, dupField)
	if k < 0 {
		return false
	}
	return bytes.HasPrefix(bytes.TrimLeft(data[k+len(dupField):], " "), []byte("true"))
}

func parseAckSeq(m *nats.Msg) (uint64, error) {
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
