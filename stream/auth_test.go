package stream_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"mailsync/internal/testenv"
	"mailsync/runner"
	"mailsync/stream"
)

// startAuthServer starts the embedded server with the roles' users, as the
// daemon does; users may replace them.

// testHandlers are the handlers a worker's consumers are named for
// (package registry has the list).
var testHandlers = []string{"mailbox", "aliases", "homeserver"}

func startAuthServer(t *testing.T, users []*server.NkeyUser) (*server.Server, *stream.Credentials) {
	t.Helper()
	creds, err := stream.LoadCredentials(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	if users == nil {
		users = creds.Users()
	}
	ns, err := stream.StartEmbedded(stream.EmbeddedOptions{StoreDir: t.TempDir(), Users: users})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns, creds
}

func connect(t *testing.T, ns *server.Server, opts ...nats.Option) (*nats.Conn, error) {
	t.Helper()
	nc, err := nats.Connect("", append(opts, nats.InProcessServer(ns))...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, err
}

func open(t *testing.T, nc *nats.Conn, lookup bool) *stream.Bus {
	t.Helper()
	b, err := stream.Open(context.Background(), nc, stream.Options{LookupOnly: lookup})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func msgs(t *testing.T, st jetstream.Stream) uint64 {
	t.Helper()
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestWorkerCannotForgeEvents: on the embedded server with the roles'
// users, a worker's key consumes and acks its own consumer and reads the
// buckets, but cannot publish an event, write the entries or state bucket,
// or delete the stream; the listener's key can; a connection without a key
// is refused.
func TestWorkerCannotForgeEvents(t *testing.T) {
	testenv.Integration(t, "NATS JetStream")
	ns, creds := startAuthServer(t, nil)
	for _, r := range stream.Roles {
		st, err := os.Stat(creds.SeedFile(r))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s seed: %v, mode %v, want 0600", r, err, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(creds.Dir); st.Mode().Perm() != 0o700 {
		t.Errorf("credentials dir mode %v, want 0700", st.Mode().Perm())
	}
	again, err := stream.LoadCredentials(creds.Dir)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := again.Key(stream.RoleWorker).PublicKey()
	b, _ := creds.Key(stream.RoleWorker).PublicKey()
	if a != b {
		t.Errorf("credentials changed on the second start")
	}

	if _, err := connect(t, ns); err == nil {
		t.Errorf("a connection without a key was accepted")
	}
	checkRoles(t, func(r stream.Role) (*nats.Conn, error) { return connect(t, ns, creds.NkeyAuth(r)) })
}

// checkRoles is the permission check shared by the embedded server and the
// external server configured as docs/operations.md says.
func checkRoles(t *testing.T, dial func(stream.Role) (*nats.Conn, error)) {
	t.Helper()
	ctx := context.Background()
	lnc, err := dial(stream.RoleListener)
	if err != nil {
		t.Fatal(err)
	}
	lb := open(t, lnc, false)
	const uuid = "0b6c2a4e-0000-4000-8000-000000000001"
	if _, err := lb.JS.Publish(ctx, "mailsync.user."+uuid, []byte(`{"v":1,"op":"add","kind":"user","uuid":"`+uuid+`"}`)); err != nil {
		t.Fatalf("listener publishes an event: %v", err)
	}
	if _, err := lb.Entries.Put(ctx, uuid, []byte(`{"dn":"uid=a"}`)); err != nil {
		t.Fatalf("listener writes the entries bucket: %v", err)
	}
	if _, err := lb.State.Put(ctx, stream.KeyCookie, []byte("c1")); err != nil {
		t.Fatalf("listener writes the state bucket: %v", err)
	}

	wnc, err := dial(stream.RoleWorker)
	if err != nil {
		t.Fatal(err)
	}
	wb := open(t, wnc, true)
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, time.Second) }
	cctx, cancel := short()
	if _, err := stream.Open(cctx, wnc, stream.Options{Replicas: 3}); err == nil {
		t.Errorf("a worker updated the stream's settings")
	}
	cancel()

	// What a worker may do: its consumer, fetch, ack; read the buckets.
	c, err := wb.Stream.CreateConsumer(ctx, runner.ConsumerConfig("mailbox", "mx1.example.org", time.Minute))
	if err != nil {
		t.Fatalf("worker creates its consumer: %v", err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for m := range batch.Messages() {
		got++
		if err := m.DoubleAck(ctx); err != nil {
			t.Errorf("worker acks: %v", err)
		}
	}
	if got != 1 {
		t.Errorf("worker fetched %d events (%v), want 1", got, batch.Error())
	}
	if e, err := wb.State.Get(ctx, stream.KeyCookie); err != nil || string(e.Value()) != "c1" {
		t.Errorf("worker reads the state bucket: %v", err)
	}
	if known, err := stream.LoadEntries(ctx, wb.Entries); err != nil || len(known) != 1 {
		t.Errorf("worker reads the entries bucket: %d entries, %v", len(known), err)
	}

	// What it may not.
	before := msgs(t, lb.Stream)
	cctx, cancel = short()
	if _, err := wb.JS.Publish(cctx, "mailsync.user."+uuid, []byte(`{"v":1,"op":"modify","kind":"user","uuid":"`+uuid+`","new":{"mailPrimaryAddress":["stolen@example.org"]}}`)); err == nil {
		t.Errorf("a worker published an event")
	}
	cancel()
	if err := wnc.Publish("mailsync.user."+uuid, []byte(`{}`)); err == nil {
		wnc.Flush()
	}
	cctx, cancel = short()
	if _, err := wb.Entries.Put(cctx, uuid, []byte(`{"dn":"forged"}`)); err == nil {
		t.Errorf("a worker wrote the entries bucket")
	}
	cancel()
	cctx, cancel = short()
	if _, err := wb.State.Put(cctx, stream.KeyCookie, []byte("forged")); err == nil {
		t.Errorf("a worker wrote the state bucket")
	}
	cancel()
	cctx, cancel = short()
	if err := wb.JS.DeleteStream(cctx, stream.StreamName); err == nil {
		t.Errorf("a worker deleted the stream")
	}
	cancel()
	time.Sleep(200 * time.Millisecond)
	if after := msgs(t, lb.Stream); after != before {
		t.Errorf("the stream went from %d to %d messages on a worker's publishes", before, after)
	}
	if e, _ := lb.State.Get(ctx, stream.KeyCookie); e == nil || string(e.Value()) != "c1" {
		t.Errorf("the cookie changed under a worker's write")
	}
	if e, _ := lb.Entries.Get(ctx, uuid); e == nil || string(e.Value()) != `{"dn":"uid=a"}` {
		t.Errorf("the entry changed under a worker's write")
	}

	// The admin republishes (dead retry) and confirms deletes, but writes
	// no entry state.
	anc, err := dial(stream.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	ab := open(t, anc, true)
	if _, err := ab.JS.Publish(ctx, "mailsync.user."+uuid, []byte(`{}`)); err != nil {
		t.Errorf("admin republishes: %v", err)
	}
	if _, err := ab.State.Put(ctx, "confirm_delete", []byte("now")); err != nil {
		t.Errorf("admin writes the state bucket: %v", err)
	}
	cctx, cancel = short()
	if _, err := ab.Entries.Put(cctx, uuid, []byte(`{"dn":"forged"}`)); err == nil {
		t.Errorf("admin wrote the entries bucket")
	}
	cancel()
}

// TestWorkerScopedToItsHost: a worker key scoped to its host may use its
// own consumers only.
func TestWorkerScopedToItsHost(t *testing.T) {
	testenv.Integration(t, "NATS JetStream")
	creds, err := stream.LoadCredentials(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	lpub, _ := creds.Key(stream.RoleListener).PublicKey()
	wpub, _ := creds.Key(stream.RoleWorker).PublicKey()
	ns, _ := startAuthServer(t, []*server.NkeyUser{
		{Nkey: lpub, Permissions: stream.Permissions(stream.RoleListener, "", nil)},
		{Nkey: wpub, Permissions: stream.Permissions(stream.RoleWorker, "mx1.example.org", testHandlers)},
	})
	lnc, err := connect(t, ns, creds.NkeyAuth(stream.RoleListener))
	if err != nil {
		t.Fatal(err)
	}
	open(t, lnc, false)
	wnc, err := connect(t, ns, creds.NkeyAuth(stream.RoleWorker))
	if err != nil {
		t.Fatal(err)
	}
	wb := open(t, wnc, true)
	ctx := context.Background()
	if _, err := wb.Stream.CreateConsumer(ctx, runner.ConsumerConfig("aliases", "mx1.example.org", time.Minute)); err != nil {
		t.Errorf("worker of mx1 creates its own consumer: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = wb.Stream.CreateConsumer(cctx, runner.ConsumerConfig("aliases", "mx2.example.org", time.Minute))
	if err == nil {
		t.Errorf("worker of mx1 created mx2's consumer")
	}
}

// TestExternalServerFromDocs starts a nats-server from the configuration
// docs/operations.md gives (its TLS files, store dir and port replaced)
// with the authorization block ServerConfig renders, and runs the role
// checks over TLS against it.
func TestExternalServerFromDocs(t *testing.T) {
	testenv.Integration(t, "a nats-server")
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	conf := testenv.DocsBlock(t, "# nats-server.conf (single server)")
	port := testenv.FreePort(t)
	for old, repl := range map[string]string{
		"0.0.0.0:4222": fmt.Sprintf("127.0.0.1:%d", port), "/etc/nats/server.pem": ca.ServerCert,
		"/etc/nats/server.key": ca.ServerKey, "/var/lib/nats": filepath.Join(dir, "store"),
	} {
		if !strings.Contains(conf, old) {
			t.Fatalf("the documented config lacks %s", old)
		}
		conf = strings.ReplaceAll(conf, old, repl)
	}
	keys := map[stream.Role]nkeys.KeyPair{}
	var users []stream.User
	for _, r := range stream.Roles {
		kp, err := stream.LoadSeed(filepath.Join(dir, string(r)+".nk"))
		if err != nil {
			t.Fatal(err)
		}
		keys[r] = kp
		pub, _ := kp.PublicKey()
		host := ""
		if r == stream.RoleWorker {
			host = "mx1.example.org"
		}
		users = append(users, stream.User{Role: r, Host: host, Handlers: testHandlers, Nkey: pub})
	}
	os.WriteFile(filepath.Join(dir, "mailsync-auth.conf"), []byte(stream.ServerConfig(users)), 0o600)
	confFile := filepath.Join(dir, "nats-server.conf")
	os.WriteFile(confFile, []byte(conf), 0o600)
	opts, err := server.ProcessConfigFile(confFile)
	if err != nil {
		t.Fatalf("the documented config: %v", err)
	}
	for _, u := range opts.Nkeys {
		for _, w := range users {
			if w.Nkey == u.Nkey && !reflect.DeepEqual(u.Permissions.Publish.Allow, stream.Permissions(w.Role, w.Host, w.Handlers).Publish.Allow) {
				t.Errorf("%s: the rendered config's permissions differ from stream.Permissions", w.Role)
			}
		}
	}
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	url := fmt.Sprintf("tls://127.0.0.1:%d", port)
	if nc, err := nats.Connect(url, nats.RootCAs(ca.CertFile)); err == nil {
		nc.Close()
		t.Errorf("the server accepted a connection without a key")
	}
	checkRoles(t, func(r stream.Role) (*nats.Conn, error) {
		kp := keys[r]
		pub, _ := kp.PublicKey()
		nc, err := nats.Connect(url, nats.RootCAs(ca.CertFile), nats.Nkey(pub, kp.Sign))
		if err == nil {
			t.Cleanup(nc.Close)
		}
		return nc, err
	})
}
