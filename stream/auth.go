package stream

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"mailsync/atomicfile"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// Role is what a NATS user of mailsync may do. Every connection to
// mailsync's JetStream, embedded or external, is one of these, and the
// server enforces it through subject permissions: a forged event needs a
// listener's key, not just a connection.
type Role string

const (
	// RoleListener is a daemon that runs a listener (and its host's
	// handlers): it publishes events, writes the entries and state buckets,
	// creates the streams, and consumes like a worker.
	RoleListener Role = "listener"
	// RoleWorker is a mail host's daemon without a listener: it consumes and
	// acks its own consumers, reads the buckets and records dead letters. It
	// cannot publish an event or write a bucket.
	RoleWorker Role = "worker"
	// RoleAdmin is the operator's command line (status, dead, replay,
	// confirm-deletes): it republishes dead letters, recreates consumers and
	// writes the mass-delete confirmation.
	RoleAdmin Role = "admin"
)

// Roles lists every role, in the order credentials are generated.
var Roles = []Role{RoleListener, RoleWorker, RoleAdmin}

// consumerName mirrors runner.ConsumerName (which imports this package).
func consumerName(handler, host string) string {
	r := strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_")
	return r.Replace(handler + "-" + host)
}

// Permissions are the subjects role may publish and subscribe to. For a
// worker, host scopes the consumers it may use to its own, those of the
// handlers named (runner.ConsumerName: <handler>-<host>); empty host: any
// host's, for credentials shared by several hosts.
func Permissions(role Role, host string, handlers []string) *server.Permissions {
	var pub []string
	switch role {
	case RoleListener:
		// Creates and updates the streams and buckets, publishes events and
		// entry states, and runs its host's handlers (dead letters).
		pub = []string{"mailsync.>", "$KV." + EntriesBucket + ".>", "$KV." + StateBucket + ".>",
			"$JS.API.>", "$JS.ACK.>", "$JS.FC.>", DeadPrefix + ".>"}
	case RoleAdmin:
		// Republishes dead letters (dead retry), recreates consumers
		// (replay), confirms held deletes; writes no entry state.
		pub = []string{"mailsync.>", "$KV." + StateBucket + ".>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", DeadPrefix + ".>"}
	default:
		pub = workerPublish(host, handlers)
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}
}

// workerPublish is all a worker publishes: JetStream API requests that read
// the streams and buckets, those of its own durable consumers, their acks,
// and its dead letters. No event subject, no $KV write, no stream change.
func workerPublish(host string, handlers []string) []string {
	kvs := []string{"KV_" + EntriesBucket, "KV_" + StateBucket}
	var pub []string
	// Reading: stream and bucket info, direct and stored message gets, the
	// ordered consumers of bucket watchers and their flow control.
	for _, s := range []string{StreamName, DeadStream, kvs[0], kvs[1]} {
		pub = append(pub, "$JS.API.STREAM.INFO."+s)
	}
	for _, kv := range kvs {
		pub = append(pub, "$JS.API.DIRECT.GET."+kv+".>", "$JS.API.STREAM.MSG.GET."+kv,
			"$JS.API.CONSUMER.CREATE."+kv+".>", "$JS.API.CONSUMER.DELETE."+kv+".*",
			"$JS.API.CONSUMER.INFO."+kv+".*")
	}
	pub = append(pub, "$JS.API.INFO", "$JS.FC.>")
	// Consuming: its durable consumers on the event stream.
	consumers := []string{"*"}
	if host != "" {
		consumers = consumers[:0]
		for _, h := range handlers {
			consumers = append(consumers, consumerName(h, host))
		}
	}
	for _, c := range consumers {
		pub = append(pub, "$JS.API.CONSUMER.CREATE."+StreamName+"."+c, "$JS.API.CONSUMER.CREATE."+StreamName+"."+c+".>",
			"$JS.API.CONSUMER.DURABLE.CREATE."+StreamName+"."+c, "$JS.API.CONSUMER.INFO."+StreamName+"."+c,
			"$JS.API.CONSUMER.MSG.NEXT."+StreamName+"."+c, "$JS.ACK."+StreamName+"."+c+".>")
	}
	for _, c := range consumers {
		pub = append(pub, DeadPrefix+"."+c+".>")
	}
	return pub
}

// Credentials are the nkeys of the roles, kept as seed files
// (<role>.nk, mode 0600) in a directory of mode 0700.
type Credentials struct {
	Dir  string
	keys map[Role]nkeys.KeyPair
}

// LoadCredentials reads the roles' seeds from dir, generating the missing
// ones (the embedded server's first start).
func LoadCredentials(dir string) (*Credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	c := &Credentials{Dir: dir, keys: map[Role]nkeys.KeyPair{}}
	for _, r := range Roles {
		kp, err := LoadSeed(c.SeedFile(r))
		if err != nil {
			return nil, err
		}
		c.keys[r] = kp
	}
	return c, nil
}

// SeedFile is the path of role's seed (nats.nkey_seed_file of a daemon on
// another host, for an embedded server that listens).
func (c *Credentials) SeedFile(r Role) string { return filepath.Join(c.Dir, string(r)+".nk") }

// Users are the server's nkey users, one per role with its permissions.
func (c *Credentials) Users() []*server.NkeyUser {
	var us []*server.NkeyUser
	for _, r := range Roles {
		pub, _ := c.keys[r].PublicKey()
		us = append(us, &server.NkeyUser{Nkey: pub, Permissions: Permissions(r, "", nil)})
	}
	return us
}

// Key is role's key pair, to sign a connection's nonce.
func (c *Credentials) Key(r Role) nkeys.KeyPair { return c.keys[r] }

// AdminSeed is where LoadCredentials keeps the admin role's seed in dir.
func AdminSeed(dir string) string { return filepath.Join(dir, string(RoleAdmin)+".nk") }

// User is one NATS user of an external server's configuration.
type User struct {
	Role Role
	// Host scopes a worker to its own consumers, those of Handlers.
	Host     string
	Handlers []string
	Nkey     string
}

// ServerConfig renders the authorization block of a nats-server
// configuration giving each user its role's permissions (Permissions): the
// external server's counterpart of the embedded one's users.
func ServerConfig(users []User) string {
	var b strings.Builder
	quote := func(subjects []string) string {
		q := make([]string, len(subjects))
		for i, s := range subjects {
			q[i] = fmt.Sprintf("%q", s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	b.WriteString("authorization {\n  users = [\n")
	for _, u := range users {
		p := Permissions(u.Role, u.Host, u.Handlers)
		fmt.Fprintf(&b, "    # %s", u.Role)
		if u.Host != "" {
			fmt.Fprintf(&b, " of %s", u.Host)
		}
		fmt.Fprintf(&b, "\n    {\n      nkey: %q\n      permissions: {\n", u.Nkey)
		fmt.Fprintf(&b, "        publish: { allow: %s }\n", quote(p.Publish.Allow))
		fmt.Fprintf(&b, "        subscribe: { allow: %s }\n", quote(p.Subscribe.Allow))
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

// LoadSeed reads the nkey seed at path, generating it (mode 0600) when
// missing.
func LoadSeed(path string) (nkeys.KeyPair, error) {
	seed, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		kp, kerr := nkeys.CreateUser()
		if kerr != nil {
			return nil, fmt.Errorf("nats credentials: %w", kerr)
		}
		seed, _ = kp.Seed()
		if err := atomicfile.Write(path, append(seed, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("nats credentials: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return nil, fmt.Errorf("nats credentials %s: not an nkey seed", path)
	}
	return kp, nil
}
