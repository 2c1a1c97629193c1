package postmap_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailsync/internal/testenv"
	"mailsync/postmap"
)

// Changes that come together share a write; what each waited for is in
// the live table when its wait returns; Exclusive writes in place of the
// pending write, whose waiters get its outcome; Close writes what is
// pending.
func TestCommitterSharesWrites(t *testing.T) {
	pf := testenv.StartPostfix(t)
	dir := t.TempDir()
	w := &postmap.Writer{Dir: dir, Type: "hash", Postmap: pf.Postmap, ConfigDir: pf.ConfigDir}
	var mu sync.Mutex
	vals := map[string]string{}
	var writes atomic.Int32
	collect := func() ([]postmap.Table, func(error) error) {
		mu.Lock()
		defer mu.Unlock()
		src := ""
		for k, v := range vals {
			src += k + " " + v + "\n"
		}
		return []postmap.Table{{Name: "t", Src: []byte(src)}}, func(err error) error {
			writes.Add(1)
			return err
		}
	}
	c := postmap.NewCommitter(w, 20*time.Millisecond, collect)
	table := "hash:" + filepath.Join(dir, "t")
	ctx := context.Background()

	const n = 40
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			k := fmt.Sprintf("k%02d@example.org", i)
			mu.Lock()
			vals[k] = "v@example.org"
			b, err := c.Join()
			mu.Unlock()
			if err == nil {
				err = b.Wait(ctx)
			}
			if err == nil {
				var got map[string]string
				if got, err = pf.TryQuery(table, k); err == nil && got[k] != "v@example.org" {
					err = fmt.Errorf("%s not in the table after its wait", k)
				}
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := writes.Load(); got > 3 {
		t.Errorf("%d changes at once made %d writes, want them to share one or two", n, got)
	}

	// A pending change gets the outcome of the Exclusive write in its place.
	mu.Lock()
	vals["x@example.org"] = "y@example.org"
	b, err := c.Join()
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := c.Exclusive(ctx, func(context.Context, *postmap.Writer) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Exclusive: %v", err)
	}
	if err := b.Wait(ctx); !errors.Is(err, boom) {
		t.Fatalf("pending change after Exclusive: %v, want its error", err)
	}

	// Close writes what is pending, then refuses.
	mu.Lock()
	vals["z@example.org"] = "q@example.org"
	b, err = c.Join()
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pf.Query(t, table, "z@example.org")["z@example.org"]; got != "q@example.org" {
		t.Fatalf("change pending at Close: lookup %q", got)
	}
	if _, err := c.Join(); !errors.Is(err, postmap.ErrClosed) {
		t.Fatalf("Join after Close: %v", err)
	}
}
