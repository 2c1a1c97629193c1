// Command mailsync keeps a mail system (Dovecot mailboxes, Postfix maps) in
// step with an LDAP directory. main is wiring only: the work lives in the
// listener, runner and handler packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"mailsync/handlers/registry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	endProfiles := testProfiles()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	endProfiles()
	os.Exit(exitCode(err, os.Stderr))
}

// usageError is a config or usage error: exit code 2, which the systemd
// unit does not restart on (RestartPreventExitStatus=2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "mailsync:", err)
	var u usageError
	var se *registry.SettingError
	if errors.As(err, &u) || errors.As(err, &se) {
		return 2
	}
	return 1
}
