package listener

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mailsync/stream"
)

// What kvWire publishes through the acker reads back through
// jetstream.KeyValue exactly as what KeyValue's own Put and Delete wrote:
// the same values, the same history of operations, the same keys, the
// same delete marker on the stored message; and the entries readers
// (stream.LoadEntries) see the same entries.
func TestKVWireMatchesKeyValue(t *testing.T) {
	ctx := context.Background()
	bus, a := ackerBus(t)
	kv := bus.Entries
	value := []byte(`{"uuid":"","dn":"uid=a,dc=x","kind":"user","attrs":{"uid":["a"]}}`)

	// KeyValue's own writes: j1 put, j2 put then deleted.
	if _, err := kv.Put(ctx, "j1", value); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "j2", value); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "j2"); err != nil {
		t.Fatal(err)
	}
	// The wire's, as one quiet round and one acked.
	w := newKVWire(kv)
	for _, round := range [][]string{{"put k1", "put k2", "del k2"}, {"put k3", "put k4", "del k4"}} {
		msg := &nats.Msg{}
		r := a.begin("state", len(round), round[0] == "put k1")
		for _, op := range round {
			key := op[4:]
			if op[:3] == "put" {
				w.putMsg(msg, key, value)
			} else {
				w.deleteMsg(msg, key)
			}
			if err := a.publish(r, msg, key); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := a.wait(ctx, r); err != nil {
			t.Fatalf("%v: %v", round, err)
		}
	}

	for _, pair := range [][2]string{{"j1", "k1"}, {"j1", "k3"}, {"j2", "k2"}, {"j2", "k4"}} {
		theirs, mine := pair[0], pair[1]
		te, terr := kv.Get(ctx, theirs)
		me, merr := kv.Get(ctx, mine)
		if !errors.Is(merr, terr) && !(terr == nil && merr == nil) {
			t.Errorf("Get %s: %v, KeyValue's own %s: %v", mine, merr, theirs, terr)
		}
		if terr == nil && merr == nil && (string(me.Value()) != string(te.Value()) || me.Operation() != te.Operation()) {
			t.Errorf("Get %s: %q %v, KeyValue's own %s: %q %v", mine, me.Value(), me.Operation(), theirs, te.Value(), te.Operation())
		}
		ops := func(key string) []jetstream.KeyValueOp {
			h, err := kv.History(ctx, key)
			if err != nil {
				t.Fatalf("history of %s: %v", key, err)
			}
			var o []jetstream.KeyValueOp
			for _, e := range h {
				o = append(o, e.Operation())
			}
			return o
		}
		if to, mo := ops(theirs), ops(mine); !slices.Equal(to, mo) {
			t.Errorf("history of %s: %v, KeyValue's own %s: %v", mine, mo, theirs, to)
		}
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for k := range keys.Keys() {
		listed = append(listed, k)
	}
	slices.Sort(listed)
	if want := []string{"j1", "k1", "k3"}; !slices.Equal(listed, want) {
		t.Errorf("keys %v, want %v", listed, want)
	}

	// The stored messages: same subjects but for the key, the same delete
	// marker, nothing else.
	st, err := bus.JS.Stream(ctx, "KV_"+stream.EntriesBucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{"j2", "k2"}, {"j2", "k4"}} {
		theirs, err := st.GetLastMsgForSubject(ctx, "$KV."+stream.EntriesBucket+"."+pair[0])
		if err != nil {
			t.Fatal(err)
		}
		mine, err := st.GetLastMsgForSubject(ctx, w.prefix+pair[1])
		if err != nil {
			t.Fatal(err)
		}
		if len(mine.Header) != len(theirs.Header) || mine.Header.Get(kvOperation) != theirs.Header.Get(kvOperation) ||
			len(mine.Data) != len(theirs.Data) {
			t.Errorf("stored delete of %s: %v %q, KeyValue's own: %v %q", pair[1], mine.Header, mine.Data, theirs.Header, theirs.Data)
		}
	}
	entries, err := stream.LoadEntries(ctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 || entries["k1"].DN != "uid=a,dc=x" || entries["j1"].DN != entries["k3"].DN {
		t.Errorf("entries read back: %v", entries)
	}
}
