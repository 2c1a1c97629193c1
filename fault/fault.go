// Package fault classifies errors once, near their source, as permanent
// (trying again cannot help: an invalid address, a path escape, a target that
// already exists) or retryable (a server down, a timeout). The handler runner
// asks with IsPermanent and never by matching strings; an error nobody
// classified counts as retryable, bounded by the runner's attempt limit.
package fault

import (
	"errors"
	"fmt"
)

type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

type retryable struct{ err error }

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

// Permanent marks err as one that no retry can fix. Nil stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanent{err}
}

// Permanentf formats a permanent error.
func Permanentf(format string, args ...any) error {
	return &permanent{fmt.Errorf(format, args...)}
}

// Retryable marks err as one that may go away by itself. Nil stays nil.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return &retryable{err}
}

// IsPermanent reports whether any error in err's chain was marked permanent.
func IsPermanent(err error) bool {
	var p *permanent
	return errors.As(err, &p)
}

// IsRetryable reports whether err was explicitly marked retryable and not
// permanent. Unclassified errors are neither: the runner retries them a
// bounded number of times.
func IsRetryable(err error) bool {
	if IsPermanent(err) {
		return false
	}
	var r *retryable
	return errors.As(err, &r)
}
