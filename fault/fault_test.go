package fault

import (
	"errors"
	"fmt"
	"testing"
)

func TestClassification(t *testing.T) {
	base := errors.New("boom")
	for _, c := range []struct {
		name                 string
		err                  error
		permanent, retryable bool
	}{
		{"plain", base, false, false},
		{"permanent", Permanent(base), true, false},
		{"retryable", Retryable(base), false, true},
		{"wrapped permanent", fmt.Errorf("rename mailbox: %w", Permanent(base)), true, false},
		{"wrapped retryable", fmt.Errorf("kick: %w", Retryable(base)), false, true},
		{"permanent wins", Retryable(Permanent(base)), true, false},
		{"permanentf", Permanentf("invalid address %q", "a@b@c"), true, false},
	} {
		if IsPermanent(c.err) != c.permanent || IsRetryable(c.err) != c.retryable {
			t.Errorf("%s: permanent %v retryable %v, want %v %v", c.name, IsPermanent(c.err), IsRetryable(c.err), c.permanent, c.retryable)
		}
		if !errors.Is(c.err, base) && c.name != "permanentf" {
			t.Errorf("%s: the cause is lost", c.name)
		}
	}
	if Permanent(nil) != nil || Retryable(nil) != nil {
		t.Error("nil must stay nil")
	}
}
