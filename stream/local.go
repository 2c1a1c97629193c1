package stream

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServeLocal lets the command line reach an embedded server that has no
// network listener: it accepts on a unix socket at path, in a directory of
// mode 0700 (so only its owner, root, can connect at all), and joins each
// connection to a fresh in-process connection of ns. The NATS protocol runs
// through unchanged, so a client still authenticates with a role's key.
// stop closes the socket and every joined connection.
func ServeLocal(ns *server.Server, path string) (stop func(), err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats local socket: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats local socket: %w", err)
	}
	_ = os.Remove(path) // a dead daemon's; the state dir lock says none runs
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("nats local socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("nats local socket: %w", err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = struct{}{}
		} else {
			delete(conns, c)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			in, err := ns.InProcessConn()
			if err != nil {
				c.Close()
				continue
			}
			track(c, true)
			track(in, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				done := make(chan struct{}, 2)
				pipe := func(dst, src net.Conn) {
					_, _ = io.Copy(dst, src)
					done <- struct{}{}
				}
				go pipe(in, c)
				go pipe(c, in)
				<-done
				c.Close()
				in.Close()
				<-done
				track(c, false)
				track(in, false)
			}()
		}
	}()
	return func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
		_ = os.Remove(path)
	}, nil
}

// unixDialer dials the local socket whatever address the client asks for.
type unixDialer struct{ path string }

func (d unixDialer) Dial(_, _ string) (net.Conn, error) {
	c, err := net.DialTimeout("unix", d.path, 5*time.Second)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no mailsync daemon serves %s (is `mailsync run` running?): %w", d.path, err)
	}
	return c, err
}

// DialLocal is the nats.Option that connects through ServeLocal's socket.
func DialLocal(path string) nats.Option {
	return nats.SetCustomDialer(unixDialer{path: path})
}

// NkeyAuth is the nats.Option that authenticates with a role's key.
func (c *Credentials) NkeyAuth(r Role) nats.Option {
	kp := c.keys[r]
	pub, _ := kp.PublicKey()
	return nats.Nkey(pub, kp.Sign)
}
