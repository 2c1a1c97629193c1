package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cluster is a JetStream cluster of separate nats-server processes (the
// server of the nats-server/v2 module, built once per test), routed on
// 127.0.0.1, so killing a node is a real SIGKILL of a real server.
type Cluster struct {
	Nodes []*Node
	t     testing.TB
}

// Node is one server of a Cluster.
type Node struct {
	Name        string
	Port        int
	ClusterPort int
	Dir         string
	conf        string
	bin         string
	log         *os.File
	Proc
}

// ClusterConfig renders node i's nats-server configuration: it is given
// the node's name, client and route ports, its store dir and the route
// URLs of all nodes.
type ClusterConfig func(name string, port, clusterPort int, storeDir string, routes []string) string

// natsServerBinary builds the nats-server of this module's nats-server/v2
// dependency (the version mailsync embeds) into dir.
func natsServerBinary(dir string) (string, error) {
	bin := filepath.Join(dir, "nats-server")
	goBin, err := GoTool()
	if err != nil {
		return "", fmt.Errorf("build nats-server: %w", err)
	}
	out, err := exec.Command(goBin, "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build nats-server: %v\n%s", err, out)
	}
	return bin, nil
}

// StartCluster starts n nodes configured by conf and waits until the
// cluster has a JetStream meta leader. Each node is SIGKILLed in
// t.Cleanup; their dirs are temp dirs.
func StartCluster(t testing.TB, n int, conf ClusterConfig, dial func(url string) (*nats.Conn, error)) *Cluster {
	t.Helper()
	Integration(t, "a NATS cluster")
	bin, err := natsServerBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t}
	var routes []string
	for i := 0; i < n; i++ {
		nd := &Node{Name: fmt.Sprintf("n%d", i+1), Port: FreePort(t), ClusterPort: FreePort(t), Dir: t.TempDir(), bin: bin}
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", nd.ClusterPort))
		c.Nodes = append(c.Nodes, nd)
	}
	for _, nd := range c.Nodes {
		nd.conf = filepath.Join(nd.Dir, "nats-server.conf")
		if err := os.WriteFile(nd.conf, []byte(conf(nd.Name, nd.Port, nd.ClusterPort, filepath.Join(nd.Dir, "store"), routes)), 0o600); err != nil {
			t.Fatal(err)
		}
		nd.Start(t)
		t.Cleanup(nd.Kill)
	}
	// Ready: JetStream answers through every node.
	for _, nd := range c.Nodes {
		Eventually(t, 60*time.Second, func() error {
			nc, err := dial(nd.URL())
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err = js.AccountInfo(ctx)
			return err
		})
	}
	return c
}

// URL is the node's client URL.
func (nd *Node) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", nd.Port) }

// URLs are all nodes' client URLs, comma-separated (nats.url).
func (c *Cluster) URLs() string {
	var us []string
	for _, nd := range c.Nodes {
		us = append(us, nd.URL())
	}
	return strings.Join(us, ",")
}

// Node returns the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, nd := range c.Nodes {
		if nd.Name == name {
			return nd
		}
	}
	return nil
}

// Start starts the node's server (again, after Kill: it rejoins from its
// store dir) and waits until it accepts clients.
func (nd *Node) Start(t testing.TB) {
	t.Helper()
	if nd.log == nil {
		logf, err := os.Create(filepath.Join(nd.Dir, "nats-server.log"))
		if err != nil {
			t.Fatal(err)
		}
		nd.log = logf
		t.Cleanup(func() { logf.Close() })
	}
	if err := nd.Proc.Start(nd.log, nd.bin, "-c", nd.conf); err != nil {
		t.Fatalf("start nats-server %s: %v", nd.Name, err)
	}
	if err := WaitTCP(fmt.Sprintf("127.0.0.1:%d", nd.Port), 20*time.Second); err != nil {
		t.Fatalf("nats-server %s: %v\n%s", nd.Name, err, nd.LogTail(20))
	}
}

// LogTail is the last n lines of the node's log.
func (nd *Node) LogTail(n int) string { return TailFile(filepath.Join(nd.Dir, "nats-server.log"), n) }

// StreamLeader is the name of the node leading stream name, with its
// replicas and whether each is current.
func StreamLeader(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.ClusterInfo, error) {
	st, err := js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return nil, fmt.Errorf("stream %s has no leader", name)
	}
	return info.Cluster, nil
}
