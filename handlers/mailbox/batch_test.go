package mailbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"mailsync/dovecotadm"
	"mailsync/handlers/mailbox"
	"mailsync/internal/testenv"
)

// TestBatchedCreatesFailOnlyTheirOwnEntry: users added at once are
// converged together and their doveadm commands share requests. Dovecot
// cannot make the homes of one domain (its directory is not writable for
// the mail user): those commands fail inside requests whose other commands
// succeed, and only their own entries wait. Every other entry has its
// mailbox, its owner marker and its applied record; once the domain is
// writable, the waiting entries complete on their own retries, and nothing
// is dead-lettered.
func TestBatchedCreatesFailOnlyTheirOwnEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: true}, testenv.DovecotOptions{}, false)
	reqs := &testenv.DoveadmRequests{}
	adm, err := dovecotadm.New(e.dc.DoveadmURL, e.dc.APIKey, dovecotadm.WithTimeout(30*time.Second),
		dovecotadm.WithHTTPClient(&http.Client{Transport: reqs}), dovecotadm.WithBatch(50, 1))
	if err != nil {
		t.Fatal(err)
	}
	e.adm = adm
	e.h = e.handler(t, mailbox.Hooks{})

	blocked := filepath.Join(e.dc.Spool, "blocked.org")
	if err := os.Mkdir(blocked, 0o755); err != nil { // root's: the mail user cannot write it
		t.Fatal(err)
	}
	const n = 60
	addr := func(i int) string {
		if i%10 == 4 {
			return fmt.Sprintf("u%02d@blocked.org", i)
		}
		return fmt.Sprintf("u%02d@example.org", i)
	}
	var good, bad []string
	for i := 0; i < n; i++ {
		e.ldap.AddUser(t, fmt.Sprintf("u%02d", i), addr(i), nil)
		if strings.HasSuffix(addr(i), "@blocked.org") {
			bad = append(bad, addr(i))
		} else {
			good = append(good, addr(i))
		}
	}
	uuids := map[string]string{}
	for _, en := range e.ldap.Entries(t) {
		if a := en.Attrs.FirstLower("mailPrimaryAddress"); a != "" {
			uuids[a] = en.UUID
		}
	}
	e.p = testenv.StartPipeline(t, e.ldap, host, e.h)

	testenv.Eventually(t, time.Minute, func() error {
		for _, a := range good {
			if !markerNames(e.dc.Home(a), a) {
				return fmt.Errorf("mailbox of %s not made", a)
			}
		}
		return nil
	})
	for _, a := range good {
		e.wantRecords(t, a, uuids[a])
	}
	for _, a := range bad {
		if _, err := os.Stat(e.dc.Home(a)); err == nil {
			t.Errorf("home of %s exists, but its domain is not writable", a)
		}
		if _, ok, err := mailbox.AppliedRecord(e.cfg.StateDir, uuids[a]); ok || err != nil {
			t.Errorf("%s has an applied record (%v), but its mailbox failed", a, err)
		}
	}
	mixed := false
	for _, users := range reqs.Requests() {
		var ok, failing bool
		for _, u := range users {
			ok = ok || slices.Contains(good, u)
			failing = failing || slices.Contains(bad, u)
		}
		mixed = mixed || (ok && failing)
	}
	if !mixed {
		t.Errorf("no doveadm request carried a failing and a succeeding entry's command: %v", reqs.Requests())
	}

	// The domain fixed, the waiting entries complete on their retries.
	if err := os.Chown(blocked, e.dc.UID, e.dc.GID); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, func() error {
		for _, a := range bad {
			if !markerNames(e.dc.Home(a), a) {
				return fmt.Errorf("mailbox of %s not made after its domain was fixed", a)
			}
		}
		return nil
	})
	e.p.Settled(t)
	for _, a := range bad {
		e.wantRecords(t, a, uuids[a])
	}
	e.wantFolders(t, bad[0], empty)
	e.wantFolders(t, good[0], empty)
	if dl := deadLetters(t, e.p); len(dl) > 0 {
		t.Errorf("%d dead letters, first: %s", len(dl), dl[0].Reason)
	}
}

// wantRecords checks addr's owner marker and applied record name uuid
// and addr.
func (e *env) wantRecords(t *testing.T, addr, uuid string) {
	t.Helper()
	var m struct{ UUID, Address string }
	data, err := os.ReadFile(filepath.Join(e.dc.Home(addr), mailbox.MarkerFile))
	if err != nil || json.Unmarshal(data, &m) != nil || m.UUID != uuid || m.Address != addr {
		t.Errorf("marker of %s: %s (%v), want uuid %s", addr, data, err, uuid)
	}
	if st, ok, err := mailbox.AppliedRecord(e.cfg.StateDir, uuid); !ok || err != nil || st.Address != addr {
		t.Errorf("applied record of %s: %+v, %v (%v)", addr, st, ok, err)
	}
}

// TestRenameFlushesOnlyItsOwnCacheEntries: a rename flushes the auth cache
// entries of the entry's old and new address and of its uid, not the
// whole cache. A login by uid cached before the rename finds the new home
// after it; the old address is unknown at once; another user's cached
// entry is still there.
func TestRenameFlushesOnlyItsOwnCacheEntries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: true}, testenv.DovecotOptions{AuthCacheTTL: time.Hour, AuthCacheNegativeTTL: time.Hour}, true)
	ctx := context.Background()
	alice := e.ldap.AddUser(t, "alice", "alice@example.org", nil)
	e.ldap.AddUser(t, "bob", "bob@example.org", nil)
	e.created(t, "alice@example.org", "bob@example.org")
	for _, u := range []string{"alice", "alice@example.org", "alice.new@example.org", "bob@example.org"} {
		e.adm.UserHome(ctx, u) // cached, positive or negative
	}
	e.ldap.Modify(t, alice, map[string][]string{"mailPrimaryAddress": {"alice.new@example.org"}})
	testenv.Eventually(t, 30*time.Second, func() error {
		if !markerNames(e.dc.Home("alice.new@example.org"), "alice.new@example.org") {
			return fmt.Errorf("alice not renamed yet")
		}
		return nil
	})
	e.p.Settled(t)
	if home, err := e.adm.UserHome(ctx, "alice"); err != nil || home != e.dc.Home("alice.new@example.org") {
		t.Errorf("home of uid alice after the rename: %q, %v; want %s", home, err, e.dc.Home("alice.new@example.org"))
	}
	if _, err := e.adm.UserHome(ctx, "alice@example.org"); !errors.Is(err, dovecotadm.ErrUnknownUser) {
		t.Errorf("old address after the rename: %v, want ErrUnknownUser", err)
	}
	if n, err := e.adm.FlushAuthCache(ctx, "bob@example.org"); err != nil || n == 0 {
		t.Errorf("bob's cache entries after alice's rename: %d, %v; want them kept (a rename flushes its own entry only)", n, err)
	}
}

// TestFreshStateDirAsksDovecotNothing: a handler started with an empty
// state dir over homes an earlier one made (its applied records lost)
// converges each user from its home: the owner marker naming the entry at
// its address says the mailbox is made, so no doveadm command is sent and
// the applied record is written. A home without a marker (made before
// mailsync) is still made sure of through Dovecot.
func TestFreshStateDirAsksDovecotNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, policy{rename: true}, testenv.DovecotOptions{}, true)
	addrs := []string{"fresh1@example.org", "fresh2@example.org", "unmarked@example.org"}
	for _, a := range addrs {
		uid, _, _ := strings.Cut(a, "@")
		e.ldap.AddUser(t, uid, a, nil)
	}
	e.created(t, addrs...)
	if err := os.Remove(filepath.Join(e.dc.Home("unmarked@example.org"), mailbox.MarkerFile)); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, e.dc.Spool)

	reqs := &testenv.DoveadmRequests{}
	adm, err := dovecotadm.New(e.dc.DoveadmURL, e.dc.APIKey, dovecotadm.WithTimeout(30*time.Second),
		dovecotadm.WithHTTPClient(&http.Client{Transport: reqs}))
	if err != nil {
		t.Fatal(err)
	}
	e.adm, e.cfg.StateDir = adm, t.TempDir()
	h := e.handler(t, mailbox.Hooks{})
	uuids := map[string]string{}
	for _, en := range e.ldap.Entries(t) {
		if a := en.Attrs.FirstLower("mailPrimaryAddress"); a != "" {
			uuids[a] = en.UUID
		}
	}
	for _, a := range addrs {
		for _, ev := range e.userEvents(t, uuids[a]) {
			if err := h.Handle(context.Background(), ev); err != nil {
				t.Errorf("%s: %v", a, err)
			}
		}
	}
	var asked []string
	for _, users := range reqs.Requests() {
		asked = append(asked, users...)
	}
	if len(asked) == 0 || slices.ContainsFunc(asked, func(u string) bool { return u != "unmarked@example.org" }) {
		t.Errorf("doveadm was asked about %v, want unmarked@example.org only", asked)
	}
	for _, a := range addrs {
		e.wantRecords(t, a, uuids[a])
	}
	// The unmarked home got its marker back; nothing else changed.
	if d := before.diff(snapshot(t, e.dc.Spool)); d != "+ example.org/unmarked/"+mailbox.MarkerFile {
		t.Errorf("the spool changed:\n%s", d)
	}
	e.wantFolders(t, "fresh1@example.org", empty)
}
