package listener

import (
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvWire is the one place that writes records of a KV bucket as plain
// messages rather than through jetstream.KeyValue: Put and Delete there
// wait for one ack each, while the acker publishes a batch's entry states
// with two (acks.go). It writes what KeyValue writes — a put is the value
// on $KV.<bucket>.<key>, a delete an empty message there with header
// KV-Operation: DEL — and kvwire_test.go holds the two side by side on a
// real JetStream, read back through KeyValue.
type kvWire struct {
	prefix   string
	put, del nats.Header // one pair a batch, reused: PublishMsg copies a message
}

// kvOperation and kvDelete are KeyValue's delete marker.
const (
	kvOperation = "KV-Operation"
	kvDelete    = "DEL"
)

func newKVWire(kv jetstream.KeyValue) *kvWire {
	return &kvWire{prefix: "$KV." + kv.Bucket() + ".", put: nats.Header{}, del: nats.Header{kvOperation: {kvDelete}}}
}

// putMsg makes m the put of value under key.
func (w *kvWire) putMsg(m *nats.Msg, key string, value []byte) {
	m.Subject, m.Header, m.Data = w.prefix+key, w.put, value
}

// deleteMsg makes m the delete of key.
func (w *kvWire) deleteMsg(m *nats.Msg, key string) {
	m.Subject, m.Header, m.Data = w.prefix+key, w.del, nil
}
