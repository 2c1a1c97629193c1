package testenv

import (
	"context"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"mailsync/stream"
)

// NATS is an embedded JetStream server in a temp store dir.
type NATS struct {
	Server   *server.Server
	URL      string
	StoreDir string
}

// StartNATS starts an embedded NATS JetStream server without a network
// listener (reached in process), shut down by t.Cleanup.
func StartNATS(t testing.TB) *NATS {
	Integration(t, "NATS JetStream")
	t.Helper()
	dir := t.TempDir()
	ns, err := stream.StartEmbedded(stream.EmbeddedOptions{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return &NATS{Server: ns, URL: ns.ClientURL(), StoreDir: dir}
}

// Bus connects to the server and opens mailsync's stream and buckets.
func (n *NATS) Bus(t testing.TB) *stream.Bus {
	t.Helper()
	nc, err := nats.Connect(n.URL, nats.InProcessServer(n.Server))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	b, err := stream.Open(context.Background(), nc, stream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
