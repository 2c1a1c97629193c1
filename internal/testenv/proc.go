package testenv

import (
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is a process a test starts, kills with SIGKILL (by its PID, as a
// crash would) and may start again: a cluster node, a mailsync daemon.
type Proc struct {
	// Supervise restarts the process a second after it exits by itself
	// (not by Kill), as systemd's Restart=on-failure does.
	Supervise bool
	mu        sync.Mutex
	cmd       *exec.Cmd
	done      chan struct{}
	restarts  int
}

// Start runs bin with args, output to out, unless it runs already. It dies
// with the test process (Pdeathsig).
func (p *Proc) Start(out io.Writer, bin string, args ...string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
		if !p.Supervise {
			return
		}
		time.Sleep(time.Second)
		p.mu.Lock()
		again := p.cmd == cmd // not killed meanwhile
		if again {
			p.cmd = nil
			p.restarts++
		}
		p.mu.Unlock()
		if again {
			_ = p.Start(out, bin, args...)
		}
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// Restarts counts the supervised restarts.
func (p *Proc) Restarts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restarts
}

// Kill ends the process with SIGKILL and waits for it.
func (p *Proc) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// Running tells whether the process runs.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}
