package mailconf

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// runOnTTY runs a Postfix command with its stderr on a pseudo-terminal and
// returns what it wrote there. Postfix commands write their complaints to
// the mail log, and to stderr only when stderr is a terminal; without one,
// `postfix check` fails saying nothing.
func runOnTTY(ctx context.Context, name string, args ...string) (string, error) {
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return runPlain(ctx, name, args...)
	}
	defer ptm.Close()
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		return runPlain(ctx, name, args...)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		return runPlain(ctx, name, args...)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return runPlain(ctx, name, args...)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &out
	cmd.Stderr = pts
	var wg sync.WaitGroup
	var tty bytes.Buffer
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(&tty, ptm) // ends with EIO once the last writer closes
	}()
	err = cmd.Run()
	pts.Close()
	wg.Wait()
	text := strings.TrimSpace(strings.ReplaceAll(out.String()+tty.String(), "\r\n", "\n"))
	return text, err
}

func runPlain(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
