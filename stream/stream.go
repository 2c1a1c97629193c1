// Package stream owns mailsync's JetStream layout: the event stream MAILSYNC,
// the dead-letter stream MAILSYNC_DEAD, the KV bucket of entry states (which
// gives every event its `old`) and the KV bucket of listener state (the sync
// cookie, held deletes, the listener lease). It also starts the embedded NATS
// server used on a single host, so the daemon and the tests run the same
// JetStream setup whether NATS is embedded or external, and defines who may
// do what on it (auth.go): nobody reaches it without a role's key.
package stream

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mailsync/event"
)

// Names of the JetStream objects mailsync uses.
const (
	StreamName    = "MAILSYNC"
	DeadStream    = "MAILSYNC_DEAD"
	DeadPrefix    = "mailsyncdead"
	EntriesBucket = "mailsync_entries"
	StateBucket   = "mailsync_state"
)

// Keys of the state bucket that more than the listener reads.
const (
	// KeyCookie is the listener's sync cookie; it exists once a first
	// refresh of the directory is complete.
	KeyCookie = "cookie"
	// KeyEntriesSeq is the stream sequence up to which the entries bucket
	// holds every published event's state.
	KeyEntriesSeq = "entries_seq"
)

// Options shape the stream. Zero values take the defaults noted.
type Options struct {
	// Replicas for a clustered JetStream (default 1).
	Replicas int
	// MaxAge of events kept for replay (default 30 days).
	MaxAge time.Duration
	// Duplicates is the Nats-Msg-Id dedupe window (default 10 minutes: a
	// listener restart after a crash replays well within it).
	Duplicates time.Duration
	// LookupOnly opens the streams and buckets as they are, never creating
	// or updating them: a worker's credentials (RoleWorker) may not.
	LookupOnly bool
}

// Bus is an open JetStream with mailsync's stream and buckets.
type Bus struct {
	NC      *nats.Conn
	JS      jetstream.JetStream
	Stream  jetstream.Stream
	Dead    jetstream.Stream
	Entries jetstream.KeyValue
	State   jetstream.KeyValue
}

// Open creates or updates the stream and buckets on nc's JetStream.
func Open(ctx context.Context, nc *nats.Conn, o Options) (*Bus, error) {
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.MaxAge == 0 {
		o.MaxAge = 30 * 24 * time.Hour
	}
	if o.Duplicates == 0 {
		o.Duplicates = 10 * time.Minute
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("open jetstream: %w", err)
	}
	b := &Bus{NC: nc, JS: js}
	b.Stream, err = ensureStream(ctx, js, o.LookupOnly, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "mailsync directory change events",
		Subjects:    []string{"mailsync.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.MaxAge,
		Duplicates:  o.Duplicates,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, err
	}
	b.Dead, err = ensureStream(ctx, js, o.LookupOnly, jetstream.StreamConfig{
		Name:        DeadStream,
		Description: "mailsync events a handler could not apply (permanent errors)",
		Subjects:    []string{DeadPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, err
	}
	b.Entries, err = ensureBucket(ctx, js, o.LookupOnly, jetstream.KeyValueConfig{
		Bucket:      EntriesBucket,
		Description: "last published state per entryUUID",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, err
	}
	b.State, err = ensureBucket(ctx, js, o.LookupOnly, jetstream.KeyValueConfig{
		Bucket:      StateBucket,
		Description: "listener state: sync cookie, held deletes, lease",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// ensureStream opens a stream, creating it when missing and updating it
// only when its settings differ: every process of every host opens the
// same stream, and an update racing a consumer's creation is what
// nats-server handles worst, so an unchanged stream is left alone.
func ensureStream(ctx context.Context, js jetstream.JetStream, lookup bool, want jetstream.StreamConfig) (jetstream.Stream, error) {
	for attempt := 1; ; attempt++ {
		st, err := js.Stream(ctx, want.Name)
		if lookup {
			if err != nil {
				return nil, fmt.Errorf("open stream %s (a listener creates it): %w", want.Name, err)
			}
			return st, nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			st, err = js.CreateStream(ctx, want)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && attempt < 3 {
				continue // created meanwhile by another process
			}
		}
		if err != nil {
			return nil, fmt.Errorf("open stream %s: %w", want.Name, err)
		}
		have := st.CachedInfo().Config
		if have.MaxAge == want.MaxAge && have.Duplicates == want.Duplicates && have.Replicas == want.Replicas &&
			len(have.Subjects) == len(want.Subjects) && (len(want.Subjects) == 0 || have.Subjects[0] == want.Subjects[0]) {
			return st, nil
		}
		st, err = js.UpdateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("update stream %s: %w", want.Name, err)
		}
		return st, nil
	}
}

// ensureBucket opens a KV bucket, creating it when missing; see
// ensureStream.
func ensureBucket(ctx context.Context, js jetstream.JetStream, lookup bool, want jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	for attempt := 1; ; attempt++ {
		kv, err := js.KeyValue(ctx, want.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) && !lookup {
			kv, err = js.CreateKeyValue(ctx, want)
			if (errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse)) && attempt < 3 {
				continue // created meanwhile by another process
			}
		}
		if err != nil {
			return nil, fmt.Errorf("open bucket %s: %w", want.Bucket, err)
		}
		return kv, nil
	}
}

// EmbeddedOptions configure the in-process NATS server.
type EmbeddedOptions struct {
	StoreDir string
	// Users may connect, each with its role's permissions
	// (Credentials.Users). Without users the server accepts anyone and so
	// must not listen (tests' in-process servers).
	Users []*server.NkeyUser
	// Listen is host:port of a network listener for other hosts; empty
	// (the single-host default): none at all, the daemon connects in
	// process and the command line through a unix socket (ServeLocal).
	Listen string
	// TLS is required with Listen: credentials never cross a network in
	// the clear.
	TLS *tls.Config
}

// StartEmbedded starts a NATS server with JetStream in this process and
// waits until it is ready.
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("start embedded nats: no store dir")
	}
	opts := &server.Options{
		ServerName: "mailsync-embedded",
		DontListen: true,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		Nkeys:      o.Users,
		// Every event and entry state goes to a subject of its own
		// (mailsync.<kind>.<entryUUID>, $KV.mailsync_entries.<entryUUID>),
		// so a cache of subject matches never hits and only churns: a
		// full refresh spent about 5% of its CPU filling and pruning it.
		NoSublistCache: true,
	}
	if o.Listen != "" {
		host, port, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("start embedded nats: listen %q: %w", o.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("start embedded nats: listen %q: bad port", o.Listen)
		}
		if o.TLS == nil || len(o.Users) == 0 {
			return nil, errors.New("start embedded nats: a network listener needs TLS and users")
		}
		opts.DontListen, opts.Host, opts.Port = false, host, p
		opts.TLSConfig, opts.TLS, opts.TLSTimeout = o.TLS, true, 2
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start embedded nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("start embedded nats: not ready after 10s")
	}
	return ns, nil
}

// LoadEntries reads every entry of the bucket into a map; see WalkEntries.
func LoadEntries(ctx context.Context, kv jetstream.KeyValue) (map[string]event.Entry, error) {
	known := make(map[string]event.Entry)
	err := WalkEntries(ctx, kv, func(e event.Entry) error {
		known[e.UUID] = e
		return nil
	})
	return known, err
}

// WalkEntries calls fn for every entry of the bucket, read through a watcher
// (never a key listing, which can come back partial on a cluster,
// nats-server#4824), and checks that what it read accounts for every
// message the bucket holds.
func WalkEntries(ctx context.Context, kv jetstream.KeyValue, fn func(event.Entry) error) error {
	st, err := kv.Status(ctx)
	if err != nil {
		return fmt.Errorf("read entries bucket status: %w", err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch entries bucket: %w", err)
	}
	defer w.Stop()
	var seen uint64
	for u := range w.Updates() {
		if u == nil {
			break
		}
		seen++
		if u.Operation() != jetstream.KeyValuePut {
			continue
		}
		var e event.Entry
		if err := json.Unmarshal(u.Value(), &e); err != nil {
			return fmt.Errorf("decode entry %s from bucket: %w", u.Key(), err)
		}
		e.UUID = u.Key()
		if err := fn(e); err != nil {
			return err
		}
	}
	if seen < st.Values() {
		return fmt.Errorf("read entries bucket: got %d records, bucket holds %d", seen, st.Values())
	}
	return nil
}
