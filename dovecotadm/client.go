// Package dovecotadm is how mailsync asks Dovecot to act on a mailbox: kick a
// user's sessions before their home moves, flush the auth cache so an old
// address stops logging in, create the default folders, ask where a user's
// home is, and read folders back over IMAP to verify a move.
//
// UCS runs the doveadm binary as root and ignores most of its failures
// (reference §1.5, §1.6). mailsync instead talks to the doveadm HTTP API, so
// a worker needs neither root nor a local doveadm, and every failure comes
// back classified with package fault, once, here at the adapter edge:
//
//   - connection refused, timeouts, 5xx, doveadm's "temporary failure" exit
//     code, a rejected API key: fault.Retryable (the host may come back or be
//     fixed; the event must not be dead-lettered meanwhile);
//   - other 4xx, unknown commands, "user unknown", "not possible": fault.Permanent.
//
// Callers tell the cases apart with errors.Is against ErrUnknownUser,
// ErrNotFound, ErrNotPossible and ErrUnauthorized, never by matching strings.
// Mutating calls are idempotent: creating a mailbox that exists, or kicking a
// user with no session, is success.
package dovecotadm

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"mailsync/fault"
)

// DefaultTimeout bounds one HTTP request when the caller's context has no
// earlier deadline.
const DefaultTimeout = 30 * time.Second

// DefaultSyncTimeout bounds one Sync or Backup: they copy whole mailboxes.
const DefaultSyncTimeout = time.Hour

// Exit codes doveadm reports in an "error" response (sysexits.h, and
// doveadm.h's DOVEADM_EX_* aliases).
const (
	exitUsage       = 64 // EX_USAGE
	exitNotPossible = 65 // EX_DATAERR = DOVEADM_EX_NOTPOSSIBLE (e.g. mailbox exists)
	exitNoUser      = 67 // EX_NOUSER
	exitNotFound    = 68 // EX_NOHOST = DOVEADM_EX_NOTFOUND
	exitTempFail    = 75 // EX_TEMPFAIL (e.g. LDAP down behind the userdb)
	exitNoPerm      = 77 // EX_NOPERM
	exitConfig      = 78 // EX_CONFIG
)

// Sentinels for errors.Is.
var (
	// ErrUnknownUser: the userdb has no such user on this host (UCS: the
	// user's home server is another host, or the address is gone). A negative
	// auth cache entry can cause it too; FlushAuthCache clears that.
	ErrUnknownUser = errors.New("user unknown")
	// ErrNotFound: the mailbox (or, for Kick, any session) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNotPossible: doveadm refused, e.g. the mailbox already exists.
	ErrNotPossible = errors.New("not possible")
	// ErrUnauthorized: the API key was rejected (HTTP 401/403).
	ErrUnauthorized = errors.New("doveadm API key rejected")
)

// CommandError is a doveadm command that ran and failed.
type CommandError struct {
	Command  string // API command name, e.g. "mailboxCreate"
	Type     string // "exitCode", "unknownMethod", "invalidParameter", ...
	ExitCode int
}

func (e *CommandError) Error() string {
	if e.Type == "exitCode" {
		return fmt.Sprintf("doveadm %s: exit code %d (%s)", e.Command, e.ExitCode, exitText(e.ExitCode))
	}
	return fmt.Sprintf("doveadm %s: %s (exit code %d)", e.Command, e.Type, e.ExitCode)
}

// Is maps exit codes to the package sentinels.
func (e *CommandError) Is(target error) bool {
	if e.Type != "exitCode" {
		return false
	}
	switch target {
	case ErrUnknownUser:
		return e.ExitCode == exitNoUser
	case ErrNotFound:
		return e.ExitCode == exitNotFound
	case ErrNotPossible:
		return e.ExitCode == exitNotPossible
	}
	return false
}

func exitText(code int) string {
	switch code {
	case exitUsage:
		return "usage"
	case exitNotPossible:
		return "not possible"
	case exitNoUser:
		return "user unknown"
	case exitNotFound:
		return "not found"
	case exitTempFail:
		return "temporary failure"
	case exitNoPerm:
		return "permission denied"
	case exitConfig:
		return "configuration error"
	}
	return "error"
}

// classify marks a command error. Exit codes that describe the request or the
// directory's answer are permanent; everything else (tempfail, I/O, internal
// errors, codes we do not know) may go away and is retryable.
func (e *CommandError) classify() error {
	if e.Type != "exitCode" {
		return fault.Permanent(e) // unknownMethod, invalidParameter: our bug, no retry helps
	}
	switch e.ExitCode {
	case exitUsage, exitNotPossible, exitNoUser, exitNotFound, exitNoPerm:
		return fault.Permanent(e)
	}
	return fault.Retryable(e)
}

// HTTPError is a response from the doveadm HTTP server other than 200.
type HTTPError struct {
	Status int
	Body   string
}

func (e *HTTPError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("doveadm HTTP %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("doveadm HTTP %d %s: %s", e.Status, http.StatusText(e.Status), e.Body)
}

// Is lets a rejected key be tested with errors.Is(err, ErrUnauthorized).
func (e *HTTPError) Is(target error) bool {
	return target == ErrUnauthorized && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden)
}

func (e *HTTPError) classify() error {
	switch {
	case e.Status >= 500, e.Status == http.StatusRequestTimeout, e.Status == http.StatusTooManyRequests:
		return fault.Retryable(e)
	case e.Status == http.StatusUnauthorized, e.Status == http.StatusForbidden:
		// A wrong key is this host's configuration, not the event's fault:
		// dead-lettering every event until an operator fixes it would lose work.
		return fault.Retryable(e)
	}
	return fault.Permanent(e)
}

// Client talks to one Dovecot's doveadm HTTP API. It is safe for concurrent use.
type Client struct {
	endpoint string
	authz    string
	http     *http.Client
	timeout  time.Duration
	syncTime time.Duration
	batch    *batcher // nil: every command in a request of its own
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout bounds every request (default DefaultTimeout).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithSyncTimeout bounds every Sync and Backup (default DefaultSyncTimeout).
func WithSyncTimeout(d time.Duration) Option { return func(c *Client) { c.syncTime = d } }

// WithHTTPClient replaces the HTTP client (its Timeout is left as it is).
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// New returns a client for the API at endpoint, e.g. "http://127.0.0.1:8080"
// (the path /doveadm/v1 is added when missing), authenticating with apiKey
// (Dovecot's doveadm_api_key, in clear; it is base64-encoded here).
func New(endpoint, apiKey string, opts ...Option) (*Client, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("doveadm endpoint %q: want http(s)://host:port", endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/doveadm/v1"
	}
	c := &Client{
		endpoint: u.String(),
		authz:    "X-Dovecot-API " + base64.StdEncoding.EncodeToString([]byte(apiKey)),
		http:     &http.Client{},
		timeout:  DefaultTimeout,
		syncTime: DefaultSyncTimeout,
	}
	WithBatch(DefaultBatchSize, DefaultInFlight)(c)
	for _, o := range opts {
		o(c)
	}
	if t, ok := c.http.Transport.(*http.Transport); ok || c.http.Transport == nil {
		// doveadm's HTTP server serves one request a process and then
		// ends; a kept connection is found dead by the next request (EOF),
		// which Go does not send again for a POST. No connection is kept
		// (DisableKeepAlives would ask for it with "Connection: close",
		// and doveadm then never answers a rejected key).
		if !ok {
			t = http.DefaultTransport.(*http.Transport)
		}
		t = t.Clone()
		t.MaxIdleConnsPerHost = -1
		h := *c.http
		h.Transport = t
		c.http = &h
	}
	return c, nil
}

// call runs one doveadm command and decodes its result into out (may be
// nil). Calls made at the same time share requests (batch.go).
func (c *Client) call(ctx context.Context, command string, params map[string]any, out any) error {
	cmd := &request{name: command, params: params, out: out}
	if c.batch == nil {
		return c.send(ctx, c.timeout, []*request{cmd})[0]
	}
	return c.batch.do(ctx, cmd)
}

// callWithin is one command in a request of its own, bounded by timeout
// instead of the client's.
func (c *Client) callWithin(ctx context.Context, timeout time.Duration, command string, params map[string]any, out any) error {
	return c.send(ctx, timeout, []*request{{name: command, params: params, out: out}})[0]
}

// send posts the commands in one request and returns each one's error, in
// order: doveadm runs them one after the other and answers each under its
// tag, so one command's failure is its own. A failure of the request
// itself (refused, timeout, 5xx) is every command's.
func (c *Client) send(ctx context.Context, timeout time.Duration, cmds []*request) []error {
	errs := make([]error, len(cmds))
	all := func(err error) []error {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	list := make([][]any, len(cmds))
	for i, cmd := range cmds {
		list[i] = []any{cmd.name, cmd.params, tag(i)}
	}
	body, err := json.Marshal(list)
	if err != nil {
		return all(fault.Permanent(err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return all(fault.Permanent(err))
	}
	req.Header.Set("Authorization", c.authz)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		// Refused, reset, DNS, timeout, cancelled: the server may be back later.
		return all(fault.Retryable(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return all(fault.Retryable(fmt.Errorf("read response: %w", err)))
	}
	if resp.StatusCode != http.StatusOK {
		return all((&HTTPError{Status: resp.StatusCode, Body: strings.TrimSpace(string(raw))}).classify())
	}
	names := cmds[0].name
	if len(cmds) > 1 {
		names = fmt.Sprintf("%s and %d more commands", names, len(cmds)-1)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		// doveadm's HTTP server answers 200 with an empty body when the
		// command process died (an i_fatal in the command).
		return all(fault.Retryable(fmt.Errorf("doveadm %s: empty response (command crashed?)", names)))
	}
	var replies [][]json.RawMessage
	if err := json.Unmarshal(raw, &replies); err != nil {
		return all(fault.Retryable(fmt.Errorf("doveadm %s: unexpected response %.200q", names, raw)))
	}
	for i, cmd := range cmds {
		var got string
		if i >= len(replies) || len(replies[i]) < 3 || json.Unmarshal(replies[i][2], &got) != nil || got != tag(i) {
			errs[i] = fault.Retryable(fmt.Errorf("doveadm %s: no answer in response %.200q", cmd.name, raw))
			continue
		}
		errs[i] = cmd.decode(replies[i])
	}
	return errs
}

// tag names the i-th command of a request.
func tag(i int) string { return "mailsync-" + strconv.Itoa(i) }

// decode reads one command's reply: its result into out, or its error.
func (cmd *request) decode(reply []json.RawMessage) error {
	command := cmd.name
	var kind string
	if err := json.Unmarshal(reply[0], &kind); err != nil {
		return fault.Retryable(fmt.Errorf("doveadm %s: unexpected reply %.200q", command, reply[0]))
	}
	switch kind {
	case "doveadmResponse":
		if cmd.out == nil {
			return nil
		}
		if err := json.Unmarshal(reply[1], cmd.out); err != nil {
			return fault.Retryable(fmt.Errorf("doveadm %s: decode %.200q: %w", command, reply[1], err))
		}
		return nil
	case "error":
		var e struct {
			Type     string `json:"type"`
			ExitCode int    `json:"exitCode"`
		}
		if err := json.Unmarshal(reply[1], &e); err != nil {
			return fault.Retryable(fmt.Errorf("doveadm %s: unexpected error %.200q", command, reply[1]))
		}
		return (&CommandError{Command: command, Type: e.Type, ExitCode: e.ExitCode}).classify()
	}
	return fault.Retryable(fmt.Errorf("doveadm %s: unexpected response kind %q", command, kind))
}

// Kick disconnects every session of user (doveadm kick). No session to kick
// is success.
func (c *Client) Kick(ctx context.Context, user string) error {
	err := c.call(ctx, "kick", map[string]any{"mask": []string{user}}, nil)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("kick %s: %w", user, err)
	}
	return nil
}

// FlushAuthCache drops the auth cache entries of users, or the whole cache
// when none are given (doveadm auth cache flush). It returns how many entries
// were dropped.
func (c *Client) FlushAuthCache(ctx context.Context, users ...string) (int, error) {
	if users == nil {
		users = []string{} // the API needs the parameter; empty means all
	}
	var out []struct {
		Entries string `json:"entries"`
	}
	if err := c.call(ctx, "authCacheFlush", map[string]any{"user": users}, &out); err != nil {
		if len(users) == 0 {
			return 0, fmt.Errorf("flush auth cache: %w", err)
		}
		return 0, fmt.Errorf("flush auth cache for %s: %w", strings.Join(users, ", "), err)
	}
	n := 0
	for _, o := range out {
		v, _ := strconv.Atoi(o.Entries)
		n += v
	}
	return n, nil
}

// CreateMailbox creates the named mailboxes of user and subscribes them.
// Mailboxes that exist already are left alone, so a replayed call succeeds.
func (c *Client) CreateMailbox(ctx context.Context, user string, names ...string) error {
	if len(names) == 0 {
		return nil
	}
	have, err := c.ListMailboxes(ctx, user)
	if err != nil {
		return fmt.Errorf("create mailboxes %s of %s: %w", strings.Join(names, ", "), user, err)
	}
	var missing []string
	for _, n := range names {
		if !containsMailbox(have, n) && !slices.Contains(missing, n) {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	err = c.call(ctx, "mailboxCreate", map[string]any{
		"user": user, "mailbox": missing, "subscriptions": true,
	}, nil)
	if errors.Is(err, ErrNotPossible) {
		// Another writer (a delivery, a login with autocreate) won the race:
		// success if every mailbox now exists.
		if have, lerr := c.ListMailboxes(ctx, user); lerr == nil {
			ok := true
			for _, n := range missing {
				ok = ok && containsMailbox(have, n)
			}
			if ok {
				return nil
			}
		}
	}
	if err != nil {
		return fmt.Errorf("create mailboxes %s of %s: %w", strings.Join(missing, ", "), user, err)
	}
	return nil
}

// CreateNewMailbox is CreateMailbox for a user whose home does not exist
// yet: the mailboxes are created without listing first (one command, not
// two). Should any exist after all (a delivery made the home meanwhile),
// it is CreateMailbox.
func (c *Client) CreateNewMailbox(ctx context.Context, user string, names ...string) error {
	if len(names) == 0 {
		return nil
	}
	err := c.call(ctx, "mailboxCreate", map[string]any{
		"user": user, "mailbox": names, "subscriptions": true,
	}, nil)
	if errors.Is(err, ErrNotPossible) {
		return c.CreateMailbox(ctx, user, names...)
	}
	if err != nil {
		return fmt.Errorf("create mailboxes %s of %s: %w", strings.Join(names, ", "), user, err)
	}
	return nil
}

// containsMailbox compares like IMAP does: INBOX case-insensitively, the
// rest exactly.
func containsMailbox(list []string, name string) bool {
	for _, l := range list {
		if l == name || (strings.EqualFold(name, "INBOX") && strings.EqualFold(l, "INBOX")) {
			return true
		}
	}
	return false
}

// ListMailboxes returns the names of user's mailboxes, sorted.
func (c *Client) ListMailboxes(ctx context.Context, user string) ([]string, error) {
	var out []struct {
		Mailbox string `json:"mailbox"`
	}
	if err := c.call(ctx, "mailboxList", map[string]any{"user": user}, &out); err != nil {
		return nil, fmt.Errorf("list mailboxes of %s: %w", user, err)
	}
	names := make([]string, 0, len(out))
	for _, o := range out {
		names = append(names, o.Mailbox)
	}
	sort.Strings(names)
	return names, nil
}

// Status is what doveadm mailbox status reports about one mailbox.
type Status struct {
	Messages int
	Unseen   int
	VSize    int64 // bytes, as Dovecot counts them (CRLF line ends)
}

// MailboxStatus returns the status of user's mailbox. A missing mailbox is
// ErrNotFound.
func (c *Client) MailboxStatus(ctx context.Context, user, mailbox string) (Status, error) {
	var out []map[string]string
	err := c.call(ctx, "mailboxStatus", map[string]any{
		"user": user, "field": []string{"messages", "unseen", "vsize"}, "mailboxMask": []string{mailbox},
	}, &out)
	if err != nil {
		return Status{}, fmt.Errorf("status of mailbox %s of %s: %w", mailbox, user, err)
	}
	for _, o := range out {
		if o["mailbox"] != mailbox && !(strings.EqualFold(mailbox, "INBOX") && strings.EqualFold(o["mailbox"], "INBOX")) {
			continue // the mask may match more than one (it is a pattern)
		}
		var s Status
		var errs []error
		s.Messages, err = strconv.Atoi(o["messages"])
		errs = append(errs, err)
		s.Unseen, err = strconv.Atoi(o["unseen"])
		errs = append(errs, err)
		s.VSize, err = strconv.ParseInt(o["vsize"], 10, 64)
		errs = append(errs, err)
		if err := errors.Join(errs...); err != nil {
			return Status{}, fault.Retryable(fmt.Errorf("status of mailbox %s of %s: %w", mailbox, user, err))
		}
		return s, nil
	}
	return Status{}, fmt.Errorf("status of mailbox %s of %s: %w", mailbox, user,
		fault.Permanent(&CommandError{Command: "mailboxStatus", Type: "exitCode", ExitCode: exitNotFound}))
}

// UserHome returns user's home directory as the userdb reports it (doveadm
// user -f home). A user the userdb does not know is ErrUnknownUser.
func (c *Client) UserHome(ctx context.Context, user string) (string, error) {
	var out map[string]map[string]string
	if err := c.call(ctx, "user", map[string]any{"userMask": []string{user}, "field": "home"}, &out); err != nil {
		return "", fmt.Errorf("home of %s: %w", user, err)
	}
	// The key is the userdb's name for the user, which may differ from the
	// one asked for (a login by uid returns the primary address).
	for _, fields := range out {
		if home := fields["home"]; home != "" {
			return home, nil
		}
	}
	return "", fmt.Errorf("home of %s: %w", user, fault.Permanent(errors.New("userdb returned no home")))
}

// Backup makes dest an exact copy of user's mail, one way (doveadm backup):
// mail that exists only in dest is deleted. dest is a dsync location, e.g.
// "maildir:/var/spool/dovecot/private/example.org/new/Maildir"; it is written
// as the user's mail uid. The caller confines dest; Dovecot does not.
func (c *Client) Backup(ctx context.Context, user, dest string) error {
	if err := c.callWithin(ctx, c.syncTime, "backup", map[string]any{"user": user, "destination": []string{dest}}, nil); err != nil {
		return fmt.Errorf("backup %s to %s: %w", user, dest, err)
	}
	return nil
}

// Sync merges user's mail and dest both ways (doveadm sync). dest is a dsync
// location as for Backup, or another host's doveadm server, "tcp:host:port"
// (doveadm_password must be the same on both). Exit code 2 means mailboxes
// changed during the sync; run it again.
func (c *Client) Sync(ctx context.Context, user, dest string) error {
	if err := c.callWithin(ctx, c.syncTime, "sync", map[string]any{"user": user, "destination": []string{dest}}, nil); err != nil {
		return fmt.Errorf("sync %s with %s: %w", user, dest, err)
	}
	return nil
}

// MailboxInfo is one mailbox of a user: its name, its GUID (which dsync
// matches mailboxes by) and how many messages it holds.
type MailboxInfo struct {
	Name     string
	GUID     string
	Messages int
}

// MailboxInfos returns every mailbox of user with its GUID and message
// count, sorted by name (one doveadm mailbox status over all mailboxes).
func (c *Client) MailboxInfos(ctx context.Context, user string) ([]MailboxInfo, error) {
	var out []map[string]string
	err := c.call(ctx, "mailboxStatus", map[string]any{
		"user": user, "field": []string{"messages", "guid"}, "mailboxMask": []string{"*"},
	}, &out)
	if err != nil {
		return nil, fmt.Errorf("status of the mailboxes of %s: %w", user, err)
	}
	infos := make([]MailboxInfo, 0, len(out))
	for _, o := range out {
		n, err := strconv.Atoi(o["messages"])
		if err != nil {
			return nil, fault.Retryable(fmt.Errorf("status of mailbox %s of %s: messages %q", o["mailbox"], user, o["messages"]))
		}
		infos = append(infos, MailboxInfo{Name: o["mailbox"], GUID: o["guid"], Messages: n})
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	return infos, nil
}

// SetMailboxGUID gives user's mailbox the GUID guid (doveadm mailbox update
// --mailbox-guid). Two hosts that created a mailbox of the same name each
// gave it its own GUID; dsync then swaps them back and forth on every run
// instead of merging, so a move first makes the GUIDs agree.
func (c *Client) SetMailboxGUID(ctx context.Context, user, mailbox, guid string) error {
	err := c.call(ctx, "mailboxUpdate", map[string]any{"user": user, "mailbox": mailbox, "mailboxGuid": guid}, nil)
	if err != nil {
		return fmt.Errorf("set GUID of mailbox %s of %s: %w", mailbox, user, err)
	}
	return nil
}

// SetACL gives identifier id (user=<name>, group=<name>, anyone,
// authenticated) the rights on user's mailbox (doveadm acl set); no rights
// removes the entry (doveadm acl delete). Dovecot needs the acl plugin.
func (c *Client) SetACL(ctx context.Context, user, mailbox, id string, rights []string) error {
	params := map[string]any{"user": user, "mailbox": mailbox, "id": id}
	cmd := "aclDelete"
	if len(rights) > 0 {
		cmd, params["right"] = "aclSet", rights
	}
	err := c.call(ctx, cmd, params, nil)
	if err != nil && !(len(rights) == 0 && errors.Is(err, ErrNotFound)) {
		return fmt.Errorf("acl of %s on %s of %s: %w", id, mailbox, user, err)
	}
	return nil
}

// ACL returns the entries of user's mailbox's ACL, identifier to rights
// (doveadm acl get; global entries included).
func (c *Client) ACL(ctx context.Context, user, mailbox string) (map[string][]string, error) {
	var out []struct {
		ID     string `json:"id"`
		Rights string `json:"rights"`
	}
	if err := c.call(ctx, "aclGet", map[string]any{"user": user, "mailbox": mailbox}, &out); err != nil {
		return nil, fmt.Errorf("acl of %s of %s: %w", mailbox, user, err)
	}
	m := map[string][]string{}
	for _, e := range out {
		m[e.ID] = strings.Fields(e.Rights)
	}
	return m, nil
}
