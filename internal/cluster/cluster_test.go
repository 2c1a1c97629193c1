// Package cluster tests mailsync on a real 3-node JetStream cluster: two
// mail hosts, each with a worker and a listener (one active), nodes killed
// with SIGKILL during a burst of directory changes.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"mailsync/event"
	"mailsync/internal/testenv"
	"mailsync/listener"
	"mailsync/stream"
)

func replaceAll(t *testing.T, s string, pairs ...string) string {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("the documented config lacks %q", pairs[i])
		}
		s = strings.ReplaceAll(s, pairs[i], pairs[i+1])
	}
	return s
}

// daemon is one mail host's `mailsync run` process.
type daemon struct {
	host, cfg, bin string
	node           string // the cluster node on its machine
	log            *os.File
	testenv.Proc
}

func (d *daemon) start(t *testing.T) {
	t.Helper()
	if err := d.Start(d.log, d.bin, "run", "-c", d.cfg); err != nil {
		t.Fatal(err)
	}
}

// TestClusterBurstWithKills: three nats-server processes configured as
// docs/operations.md says, mailsync's streams and buckets at R3, mail hosts
// mx1 (on node n1) and mx2 (on n2), each running a worker (mailbox and
// aliases handlers, its own Dovecot) and a listener. During a burst of
// directory changes the MAILSYNC stream leader's machine (its nats-server,
// and its mailsync if it has one) is killed with SIGKILL and restarted,
// then the active listener's machine likewise. Afterwards: every entry's
// last event and stored state equal the directory, no (entryUUID, CSN) is
// in the stream twice, `mailsync check` passes on both hosts (mailboxes and
// maps equal what the final directory says), and the killed nodes are
// current replicas again. MAILSYNC_CLUSTER_CHANGES sets the burst (default
// 1000; the full run is 5000).
func TestClusterBurstWithKills(t *testing.T) {
	changes := 1000
	if v := os.Getenv("MAILSYNC_CLUSTER_CHANGES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 50 {
			t.Fatalf("MAILSYNC_CLUSTER_CHANGES=%q: want a number of at least 50", v)
		}
		changes = n
	}
	ldap := testenv.StartSlapd(t)
	ldap.Add(t, "cn=example.org,"+ldap.BaseDN, map[string][]string{"objectClass": {"univentionMailDomainname"}, "cn": {"example.org"}})
	ca := testenv.NewCA(t)

	// The roles' keys and the server's authorization block.
	keyDir := t.TempDir()
	var users []stream.User
	keys := map[stream.Role]nkeys.KeyPair{}
	for _, r := range []stream.Role{stream.RoleListener, stream.RoleAdmin} {
		kp, err := stream.LoadSeed(filepath.Join(keyDir, string(r)+".nk"))
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		keys[r] = kp
		users = append(users, stream.User{Role: r, Nkey: pub})
	}
	authConf := stream.ServerConfig(users)
	nodeConf := testenv.DocsBlock(t, "# nats-server.conf (node n1 of 3)")
	conf := func(name string, port, clusterPort int, storeDir string, routes []string) string {
		os.WriteFile(filepath.Join(filepath.Dir(storeDir), "mailsync-auth.conf"), []byte(authConf), 0o600)
		return replaceAll(t, nodeConf,
			"server_name: n1", "server_name: "+name,
			"0.0.0.0:4222", fmt.Sprintf("127.0.0.1:%d", port),
			"0.0.0.0:6222", fmt.Sprintf("127.0.0.1:%d", clusterPort),
			"/etc/nats/server.pem", ca.ServerCert, "/etc/nats/server.key", ca.ServerKey,
			"/var/lib/nats", storeDir,
			`"nats-route://n1.example.org:6222"`, `"`+routes[0]+`"`,
			`"nats-route://n2.example.org:6222"`, `"`+routes[1]+`"`,
			`"nats-route://n3.example.org:6222"`, `"`+routes[2]+`"`)
	}
	admin := keys[stream.RoleAdmin]
	adminPub, _ := admin.PublicKey()
	dial := func(url string) (*nats.Conn, error) {
		return nats.Connect(strings.ReplaceAll(url, "nats://", "tls://"), nats.RootCAs(ca.CertFile), nats.Nkey(adminPub, admin.Sign),
			nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	}
	cl := testenv.StartCluster(t, 3, conf, dial)
	tlsURLs := strings.ReplaceAll(cl.URLs(), "nats://", "tls://")

	bin := testenv.BuildRelease(t)
	daemons := map[string]*daemon{}
	for i, host := range []string{"mx1.example.org", "mx2.example.org"} {
		dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: host})
		dir := t.TempDir()
		natsBlock := replaceAll(t, testenv.DocsBlock(t, "nats:\n  url: tls://n1.example.org:4222,tls://n2.example.org:4222,tls://n3.example.org:4222"),
			"tls://n1.example.org:4222,tls://n2.example.org:4222,tls://n3.example.org:4222", tlsURLs,
			"/etc/mailsync/nats-ca.pem", ca.CertFile,
			"/etc/mailsync/nats/listener.nk", filepath.Join(keyDir, "listener.nk"),
			"/etc/mailsync/nats/admin.nk", filepath.Join(keyDir, "admin.nk"))
		cfg := testenv.NewMailsyncConfig(t, dir).Set("host", host).Handlers("mailbox", "aliases").
			Slapd(ldap).Dovecot(dc).Postfix(testenv.StartPostfix(t), "").Merge(natsBlock).
			Set("log.level", "info").Write("")
		logf, err := os.Create(filepath.Join(dir, "mailsync.log"))
		if err != nil {
			t.Fatal(err)
		}
		d := &daemon{host: host, cfg: cfg, bin: bin, node: fmt.Sprintf("n%d", i+1), log: logf}
		d.Supervise = true // as systemd restarts it
		daemons[host] = d
		t.Cleanup(func() {
			d.Kill()
			if t.Failed() {
				t.Logf("%s log:\n%s", host, testenv.TailFile(d.log.Name(), 40))
			}
			logf.Close()
		})
	}

	nc, err := dial(cl.URLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	mx1, mx2 := daemons["mx1.example.org"], daemons["mx2.example.org"]
	mx1.start(t)
	var bus *stream.Bus
	testenv.Eventually(t, 60*time.Second, func() error {
		b, err := stream.Open(ctx, nc, stream.Options{LookupOnly: true})
		if err != nil {
			return err
		}
		if _, err := b.State.Get(ctx, listener.KeyLease); err != nil {
			return fmt.Errorf("no listener lease yet: %w", err)
		}
		bus = b
		return nil
	})
	mx2.start(t)
	for _, name := range []string{stream.StreamName, stream.DeadStream, "KV_" + stream.EntriesBucket, "KV_" + stream.StateBucket} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("%s has %d replicas, want 3", name, r)
		}
	}

	// machine kills: a node's nats-server and the mailsync on it, if any.
	killMachine := func(node string) []func() {
		var restart []func()
		nd := cl.Node(node)
		nd.Kill()
		restart = append(restart, func() { nd.Start(t) })
		for _, d := range daemons {
			if d.node == node {
				d.Kill()
				restart = append(restart, func() { d.start(t) })
			}
		}
		return restart
	}
	// Both ask the cluster, which may be electing a leader just then.
	activeHost := func() string {
		var host string
		testenv.Eventually(t, 30*time.Second, func() error {
			e, err := bus.State.Get(ctx, listener.KeyLease)
			if err != nil {
				return err
			}
			var rec struct{ Holder string }
			json.Unmarshal(e.Value(), &rec)
			host, _, _ = strings.Cut(rec.Holder, ":")
			return nil
		})
		return host
	}
	leaseRev := func() uint64 {
		e, err := bus.State.Get(ctx, listener.KeyLease)
		if err != nil {
			return 0
		}
		return e.Revision()
	}
	streamLeader := func() string {
		var leader string
		testenv.Eventually(t, 30*time.Second, func() error {
			ci, err := testenv.StreamLeader(ctx, js, stream.StreamName)
			if err != nil {
				return err
			}
			leader = ci.Leader
			return nil
		})
		return leader
	}

	// The burst: users added (homed on mx1 and mx2 alternately), then
	// each changed again and again (alternative addresses), paced to last
	// about 40 s whatever its size so the kills land mid-burst.
	nUsers := changes / 5
	pace := 40 * time.Second / time.Duration(changes)
	dns := make([]string, nUsers)
	var restartA, restartB []func()
	var killedA, killedB, killedHost string
	var killedAt time.Time
	start := time.Now()
	for i := 0; i < changes; i++ {
		switch i {
		case changes / 3:
			killedA = streamLeader()
			restartA = killMachine(killedA)
			t.Logf("change %d: killed %s, the %s leader's machine", i, killedA, stream.StreamName)
		case changes / 2:
			for _, f := range restartA {
				f()
			}
			t.Logf("change %d: restarted %s", i, killedA)
		case 2 * changes / 3:
			host := activeHost()
			d := daemons[host]
			if d == nil {
				t.Fatalf("active listener on %q, not a known host", host)
			}
			killedB, killedHost, killedAt = d.node, host, time.Now()
			restartB = killMachine(killedB)
			t.Logf("change %d: killed %s, the active listener's (%s) machine", i, killedB, host)
		case 5 * changes / 6:
			// The standby has taken over, and keeps renewing, before the
			// killed machine is back.
			testenv.Eventually(t, 60*time.Second, func() error {
				rev := leaseRev()
				if h := activeHost(); h == killedHost {
					return fmt.Errorf("the lease is still %s's", h)
				}
				time.Sleep(listener.DefaultLeaseRenew + 500*time.Millisecond)
				if leaseRev() == rev {
					return fmt.Errorf("the lease is not renewed")
				}
				return nil
			})
			t.Logf("change %d: the standby %s holds and renews the lease (checked %s after the kill)", i, activeHost(),
				time.Since(killedAt).Round(time.Millisecond))
			for _, f := range restartB {
				f()
			}
			t.Logf("change %d: restarted %s", i, killedB)
		}
		u := i % nUsers
		uid := fmt.Sprintf("c%05d", u)
		if i < nUsers {
			home := "mx1.example.org"
			if u%2 == 1 {
				home = "mx2.example.org"
			}
			dns[u] = ldap.AddUser(t, uid, uid+"@example.org", map[string][]string{"univentionMailHomeServer": {home}})
		} else {
			ldap.Modify(t, dns[u], map[string][]string{"mailAlternativeAddress": {fmt.Sprintf("%s-%d@example.org", uid, i/nUsers)}})
		}
		time.Sleep(pace)
	}
	t.Logf("%d changes to %d users in %s; the listener lease is held by %s; daemons restarted after exiting on their own: mx1 %d, mx2 %d",
		changes, nUsers, time.Since(start).Round(time.Millisecond), activeHost(), mx1.Restarts(), mx2.Restarts())

	// Both hosts converge on the final directory: `mailsync check`
	// compares mailboxes and maps with it.
	settle := time.Now()
	for _, d := range daemons {
		testenv.Eventually(t, 5*time.Minute, func() error {
			var out bytes.Buffer
			cmd := exec.Command(bin, "check", "-c", d.cfg)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				time.Sleep(time.Second)
				return fmt.Errorf("%s: mailsync check: %v\n%.1500s", d.host, err, out.String())
			}
			return nil
		})
	}
	t.Logf("both hosts in step with the directory %s after the burst", time.Since(settle).Round(time.Millisecond))

	// The stream: every entry's last event and stored state are the
	// directory's; no (entryUUID, CSN) twice.
	want := ldap.Entries(t)
	var evs []event.Event
	testenv.Eventually(t, 60*time.Second, func() error {
		evs = evs[:0]
		info, err := bus.Stream.Info(ctx)
		if err != nil {
			return err
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := bus.Stream.GetMsg(ctx, seq)
			if err != nil {
				return fmt.Errorf("read event %d: %w", seq, err)
			}
			var ev event.Event
			if err := json.Unmarshal(m.Data, &ev); err != nil {
				return err
			}
			evs = append(evs, ev)
		}
		last := map[string]event.Event{}
		for _, ev := range evs {
			last[ev.UUID] = ev
		}
		for _, w := range want {
			ev, ok := last[w.UUID]
			if !ok || ev.Op == event.OpDelete || ev.DN != w.DN || !ev.New.Equal(w.Attrs) {
				return fmt.Errorf("last event for %s is not the directory's state", w.DN)
			}
		}
		return nil
	})
	seen := map[string]int{}
	for _, ev := range evs {
		seen[ev.UUID+" "+ev.CSN]++
	}
	if dups := len(evs) - len(seen); dups != 0 {
		t.Errorf("%d events in the stream twice (same entryUUID and CSN)", dups)
	}
	kv, err := stream.LoadEntries(ctx, bus.Entries)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if e, ok := kv[w.UUID]; !ok || e.DN != w.DN || !e.Attrs.Equal(w.Attrs) {
			t.Errorf("entries bucket for %s differs from the directory", w.DN)
		}
	}
	t.Logf("%d events, %d distinct (entryUUID, CSN) for %d changes (a listener catching up after a kill sends an entry's latest state once)",
		len(evs), len(seen), changes)

	if os.Getenv("MAILSYNC_CLUSTER_LOG") != "" {
		for _, d := range daemons {
			data, _ := os.ReadFile(d.log.Name())
			for _, l := range strings.Split(string(data), "\n") {
				if strings.Contains(l, `"listener"`) || strings.Contains(l, "lease") || strings.Contains(l, `"level":"error"`) || strings.Contains(l, `"level":"warn"`) {
					t.Logf("%s: %.300s", d.host, l)
				}
			}
		}
	}

	// The killed nodes rejoined and caught up.
	for _, name := range []string{stream.StreamName, "KV_" + stream.EntriesBucket, "KV_" + stream.StateBucket} {
		testenv.Eventually(t, 2*time.Minute, func() error {
			ci, err := testenv.StreamLeader(ctx, js, name)
			if err != nil {
				return err
			}
			peers := map[string]bool{ci.Leader: true}
			for _, r := range ci.Replicas {
				if !r.Current || r.Lag != 0 {
					return fmt.Errorf("%s: replica %s current %v lag %d", name, r.Name, r.Current, r.Lag)
				}
				peers[r.Name] = true
			}
			for _, k := range []string{killedA, killedB} {
				if !peers[k] {
					return fmt.Errorf("%s: node %s is not among its peers %v", name, k, peers)
				}
			}
			return nil
		})
	}
}
