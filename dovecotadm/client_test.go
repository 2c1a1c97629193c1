package dovecotadm_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"mailsync/dovecotadm"
	"mailsync/fault"
	"mailsync/internal/testenv"
)

func start(t *testing.T) (*testenv.Slapd, *testenv.Dovecot, *dovecotadm.Client) {
	t.Helper()
	ldap := testenv.StartSlapd(t)
	ldap.AddUser(t, "alice", "alice@example.org", nil)
	ldap.AddUser(t, "bob", "bob@example.org", map[string][]string{"univentionMailHomeServer": {"other.example.org"}})
	d := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{})
	c, err := dovecotadm.New(d.DoveadmURL, d.APIKey, dovecotadm.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return ldap, d, c
}

func TestMailboxes(t *testing.T) {
	t.Parallel()
	_, d, c := start(t)
	ctx := context.Background()
	const user = "alice@example.org"

	defaults := []string{"INBOX", "Sent", "Trash", "Spam"}
	for i := 0; i < 2; i++ { // the second call finds everything there
		if err := c.CreateMailbox(ctx, user, defaults...); err != nil {
			t.Fatalf("create #%d: %v", i+1, err)
		}
	}
	got, err := c.ListMailboxes(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"INBOX", "Sent", "Spam", "Trash"}
	if !slices.Equal(got, want) {
		t.Errorf("mailboxes = %v, want %v", got, want)
	}

	d.Deliver(t, user, "hello")
	st, err := c.MailboxStatus(ctx, user, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 1 || st.Unseen != 1 || st.VSize == 0 {
		t.Errorf("INBOX status = %+v, want 1 unseen message", st)
	}
	_, err = c.MailboxStatus(ctx, user, "Nope")
	if !errors.Is(err, dovecotadm.ErrNotFound) || !fault.IsPermanent(err) {
		t.Errorf("status of a missing mailbox: %v, want permanent ErrNotFound", err)
	}

	// What the user sees over IMAP, via the production reader.
	cl := d.IMAP(t, user)
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	folders, err := d.IMAPReader().Folders(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	if f := folders["INBOX"]; f.Messages != 1 || f.Flagged != 1 || len(folders) != 4 {
		t.Errorf("folders = %+v, want 4 with INBOX 1 message, 1 flagged", folders)
	}
}

func TestUserHome(t *testing.T) {
	t.Parallel()
	_, d, c := start(t)
	ctx := context.Background()
	home, err := c.UserHome(ctx, "Alice@Example.org")
	if err != nil {
		t.Fatal(err)
	}
	if want := d.Home("alice@example.org"); home != want {
		t.Errorf("home = %q, want %q", home, want)
	}
	for _, u := range []string{"nobody@example.org", "bob@example.org"} {
		_, err := c.UserHome(ctx, u)
		if !errors.Is(err, dovecotadm.ErrUnknownUser) || !fault.IsPermanent(err) {
			t.Errorf("home of %s: %v, want permanent ErrUnknownUser", u, err)
		}
	}
	if err := c.CreateMailbox(ctx, "bob@example.org", "INBOX"); !errors.Is(err, dovecotadm.ErrUnknownUser) {
		t.Errorf("create for a user homed elsewhere: %v, want ErrUnknownUser", err)
	}
}

func TestKick(t *testing.T) {
	t.Parallel()
	_, d, c := start(t)
	ctx := context.Background()
	if err := c.Kick(ctx, "alice@example.org"); err != nil {
		t.Fatalf("kick without sessions: %v", err)
	}
	cl := d.IMAP(t, "alice@example.org")
	if err := c.Kick(ctx, "alice@example.org"); err != nil {
		t.Fatalf("kick: %v", err)
	}
	select {
	case <-cl.Closed():
	case <-time.After(5 * time.Second):
		t.Fatalf("session still open after kick")
	}
}

// A renamed user: until the auth cache is flushed, the old address still
// logs in (UCS manual: "can still log in for 5 minutes"); after, it cannot.
func TestFlushAuthCache(t *testing.T) {
	t.Parallel()
	ldap, d, c := start(t)
	ctx := context.Background()
	if err := d.Login("alice@example.org", "secret"); err != nil {
		t.Fatal(err)
	}
	ldap.Modify(t, ldap.UserDN("alice"), map[string][]string{"mailPrimaryAddress": {"alice.new@example.org"}})
	if err := d.Login("alice@example.org", "secret"); err != nil {
		t.Fatalf("old address before flush: %v (the cache should still know it)", err)
	}
	n, err := c.FlushAuthCache(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("flush dropped 0 entries")
	}
	if err := d.Login("alice@example.org", "secret"); !errors.Is(err, dovecotadm.ErrLoginFailed) {
		t.Errorf("old address after flush: %v, want ErrLoginFailed", err)
	}
	if err := d.Login("alice.new@example.org", "secret"); err != nil {
		t.Errorf("new address after flush: %v", err)
	}
	if _, err := c.FlushAuthCache(ctx, "alice.new@example.org"); err != nil {
		t.Errorf("flush one user: %v", err)
	}
}

func TestDovecotDown(t *testing.T) {
	t.Parallel()
	_, d, c := start(t)
	ctx := context.Background()
	d.Stop(t)
	for name, call := range map[string]func() error{
		"kick":  func() error { return c.Kick(ctx, "alice@example.org") },
		"flush": func() error { _, err := c.FlushAuthCache(ctx); return err },
		"home":  func() error { _, err := c.UserHome(ctx, "alice@example.org"); return err },
		"imap":  func() error { _, err := d.IMAPReader().Folders(ctx, "alice@example.org"); return err },
	} {
		err := call()
		if !fault.IsRetryable(err) || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s with dovecot down: %v, want retryable connection refused", name, err)
		}
	}
	d.Start(t)
	if err := c.Kick(ctx, "alice@example.org"); err != nil {
		t.Errorf("kick after restart: %v", err)
	}
}

func TestBadKey(t *testing.T) {
	t.Parallel()
	_, d, _ := start(t)
	c, err := dovecotadm.New(d.DoveadmURL, "wrong")
	if err != nil {
		t.Fatal(err)
	}
	err = c.Kick(context.Background(), "alice@example.org")
	if !errors.Is(err, dovecotadm.ErrUnauthorized) || !fault.IsRetryable(err) {
		t.Errorf("wrong key: %v, want retryable ErrUnauthorized", err)
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	_, d, c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	if err := c.Kick(ctx, "alice@example.org"); !fault.IsRetryable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("kick past deadline: %v, want retryable deadline exceeded", err)
	}
	if _, err := d.IMAPReader().Folders(ctx, "alice@example.org"); !fault.IsRetryable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("IMAP past deadline: %v, want retryable deadline exceeded", err)
	}
}

func TestBackup(t *testing.T) {
	t.Parallel()
	_, d, c := start(t)
	ctx := context.Background()
	d.Deliver(t, "alice@example.org", "one")
	d.Deliver(t, "alice@example.org", "two")
	dest := d.Spool + "/copy/alice/Maildir"
	for i := 0; i < 2; i++ { // a replay converges
		if err := c.Backup(ctx, "alice@example.org", "maildir:"+dest); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(dest + "/" + sub)
		if err != nil {
			t.Fatal(err)
		}
		n += len(entries)
	}
	if n != 2 {
		t.Errorf("backup holds %d messages, want 2", n)
	}
	if err := c.Sync(ctx, "alice@example.org", "maildir:"+dest); err != nil {
		t.Errorf("sync: %v", err)
	}
	if err := c.Backup(ctx, "nobody@example.org", "maildir:"+dest); !errors.Is(err, dovecotadm.ErrUnknownUser) {
		t.Errorf("backup of an unknown user: %v, want ErrUnknownUser", err)
	}
}

// Calls made at once share requests, and each caller gets its own
// command's answer: users Dovecot does not know fail, in the same
// requests as users whose mailboxes are made; kicks and auth cache
// flushes sent among mailbox commands succeed too.
func TestBatchedCallsAnswerEachCaller(t *testing.T) {
	t.Parallel()
	ldap := testenv.StartSlapd(t)
	const n = 40
	known := func(i int) bool { return i%8 != 3 }
	for i := 0; i < n; i++ {
		if known(i) {
			ldap.AddUser(t, fmt.Sprintf("u%02d", i), fmt.Sprintf("u%02d@example.org", i), nil)
		}
	}
	d := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{})
	rec := &testenv.DoveadmRequests{}
	c, err := dovecotadm.New(d.DoveadmURL, d.APIKey, dovecotadm.WithTimeout(30*time.Second),
		dovecotadm.WithHTTPClient(&http.Client{Transport: rec}), dovecotadm.WithBatch(50, 1))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	errs := make([]error, n)
	var others []error // kicks and flushes in the same requests
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(3)
		go func() {
			defer wg.Done()
			errs[i] = c.CreateNewMailbox(ctx, fmt.Sprintf("u%02d@example.org", i), "INBOX", "Spam")
		}()
		go func() {
			defer wg.Done()
			err := c.Kick(ctx, fmt.Sprintf("u%02d@example.org", i))
			mu.Lock()
			others = append(others, err)
			mu.Unlock()
		}()
		go func() {
			defer wg.Done()
			_, err := c.FlushAuthCache(ctx, fmt.Sprintf("u%02d@example.org", i))
			mu.Lock()
			others = append(others, err)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, err := range others {
		if err != nil {
			t.Errorf("kick or flush in a request with mailbox commands: %v", err)
		}
	}
	reqs := rec.Requests()
	for i, err := range errs {
		user := fmt.Sprintf("u%02d@example.org", i)
		if !known(i) {
			if !errors.Is(err, dovecotadm.ErrUnknownUser) || !fault.IsPermanent(err) {
				t.Errorf("%s (not in the directory): %v, want permanent ErrUnknownUser", user, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", user, err)
			continue
		}
		if got, err := c.ListMailboxes(ctx, user); err != nil || !slices.Equal(got, []string{"INBOX", "Spam"}) {
			t.Errorf("mailboxes of %s: %v, %v; want INBOX, Spam", user, got, err)
		}
	}
	creates, mixed := 0, false
	for _, users := range reqs {
		creates++
		var ok, bad bool
		for _, u := range users {
			var i int
			fmt.Sscanf(u, "u%02d@", &i)
			ok, bad = ok || known(i), bad || !known(i)
		}
		mixed = mixed || (ok && bad)
	}
	if creates >= n/2 {
		t.Errorf("%d creates took %d requests; concurrent calls should share them", n, creates)
	}
	if !mixed {
		t.Errorf("no request carried a failing and a succeeding command: %v", reqs)
	}
}
