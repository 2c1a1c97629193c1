// Package migrate moves a mailbox to its new home server when the user's
// home server changes (mail/dovecot/mailbox/move_on_homeserver_change):
// the mailbox handler of the old home server asks it before its delete
// policy applies. Each move is recorded (package journal) before its first
// step, every step is idempotent, and a crash is completed by the
// redelivered event; see Mover.
package migrate

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"mailsync/address"
	"mailsync/atomicfile"
	"mailsync/dovecotadm"
	"mailsync/fault"
	"mailsync/journal"
)

// Moving mail between home servers (mail/dovecot/mailbox/move_on_homeserver_change).
//
// Beyond UCS: the manual (14.7.10) says mail data is not moved when a user's
// home server changes, and with mail/dovecot/mailbox/delete=yes the old
// server deletes it (reference §1.9 item 2). With the setting on, the old
// home server copies the mailbox to the new one before its delete policy
// applies:
//
//  1. an intent record is written (state dir, homeserver-moves/<uuid>.json);
//  2. the user goes into a passwd-file (Userdb) that this host's Dovecot
//     consults for doveadm only, with the old home, so doveadm still finds
//     the user that the LDAP userdb's home-server filter no longer returns
//     (IMAP logins and LMTP deliveries here keep refusing the user); the auth
//     cache is flushed and the user's sessions here are kicked;
//  3. mailbox GUIDs are aligned (a mailbox both hosts created gets this
//     host's GUID on the new host, or dsync swaps GUIDs forever instead of
//     merging) and `doveadm sync` — two-way, so mail delivered on the new
//     host meanwhile is kept; never `backup`, which would erase it — runs
//     from here to the new host's doveadm server (tcp:host:port);
//  4. every folder is compared: the new host must hold at least as many
//     messages as this one;
//  5. only then the mailbox handler's delete policy applies (remove);
//  6. the user leaves the passwd-file, the auth cache is flushed, and the
//     record is dropped.
//
// The new host down, or unknown to it yet, is retryable: the event is not
// acked, so the move completes when it is back. A crash at any step is
// completed by the redelivered event: the record says whether the copy was
// verified, so a crash after verification never copies again.

// Steps names the points a move passes, in order; Hooks.At is
// called after each.
var Steps = []string{
	"moveaway:intent", "moveaway:resolvable", "moveaway:synced",
	"moveaway:verified", "moveaway:removed", "moveaway:done",
}

// LocalDoveadm is what a move asks of this host's Dovecot;
// *dovecotadm.Client has it.
type LocalDoveadm interface {
	Kick(ctx context.Context, user string) error
	FlushAuthCache(ctx context.Context, users ...string) (int, error)
	UserHome(ctx context.Context, user string) (string, error)
	MailboxInfos(ctx context.Context, user string) ([]dovecotadm.MailboxInfo, error)
	Sync(ctx context.Context, user, dest string) error
}

// PeerDoveadm is what a move asks of the new home server's Dovecot;
// *dovecotadm.Client has it.
type PeerDoveadm interface {
	MailboxInfos(ctx context.Context, user string) ([]dovecotadm.MailboxInfo, error)
	SetMailboxGUID(ctx context.Context, user, mailbox, guid string) error
}

// Peer is another mail host mail can move to.
type Peer struct {
	// Doveadm reads (and aligns GUIDs on) the peer's Dovecot.
	Doveadm PeerDoveadm
	// Dsync is where this host's doveadm reaches the peer's doveadm
	// server: "tcp:host:port" (doveadm_password shared by both).
	Dsync string
}

// Config configures the Mover.
type Config struct {
	// Host is this mail host's FQDN.
	Host string
	// StateDir holds the move records (homeserver-moves/, created 0700).
	StateDir string
	// Userdb is the passwd-file this host's Dovecot reads for doveadm
	// (README: "Moving mail between home servers"); created if missing.
	Userdb string
	// Local is this host's Dovecot.
	Local LocalDoveadm
	// Peers are the other mail hosts by lowercased FQDN.
	Peers map[string]Peer
	// ResolveTimeout bounds the wait for this host's Dovecot to find a
	// user through Userdb (default 5s: passwd-file re-reads a changed file
	// at most once a second).
	ResolveTimeout time.Duration
}

// Hooks let tests stop or observe a move at a step.
type Hooks struct {
	// At is called after each step of Steps; an error ends the move
	// there, leaving its record behind.
	At func(step string) error
}

// Move is one mailbox leaving this host.
type Move struct {
	UUID string `json:"uuid"`
	DN   string `json:"dn"`
	// Address is the primary address the home on this host belongs to.
	Address string `json:"address"`
	// User is the Dovecot username on both hosts during the move: the
	// entry's new primary address (the same as Address unless the address
	// changed with the home server).
	User string `json:"user"`
	// Home is the mailbox's home directory on this host.
	Home string `json:"home"`
	// To is the new home server's FQDN.
	To string `json:"to"`
}

type moveRecord struct {
	V        int       `json:"v"`
	Move     Move      `json:"move"`
	Verified bool      `json:"verified,omitempty"`
	At       time.Time `json:"at"`
}

// Mover copies mailboxes to their new home server.
type Mover struct {
	cfg     Config
	log     zerolog.Logger
	hooks   Hooks
	records *journal.Journal // the move records

	userdbMu sync.Mutex // one rewrite of the passwd-file at a time
}

// New returns a Mover; the state dir and an empty userdb file are
// created if missing.
func New(cfg Config, log zerolog.Logger, hooks Hooks) (*Mover, error) {
	cfg.Host = address.CanonicalHost(strings.TrimSpace(cfg.Host))
	switch {
	case cfg.Host == "":
		return nil, errors.New("mover: Host (this host's FQDN) is required")
	case cfg.StateDir == "":
		return nil, errors.New("mover: StateDir is required")
	case cfg.Userdb == "" || !filepath.IsAbs(cfg.Userdb):
		return nil, fmt.Errorf("mover: Userdb %q: want an absolute path", cfg.Userdb)
	case cfg.Local == nil:
		return nil, errors.New("mover: Local (this host's doveadm) is required")
	}
	if cfg.ResolveTimeout == 0 {
		cfg.ResolveTimeout = 5 * time.Second
	}
	peers := make(map[string]Peer, len(cfg.Peers))
	for host, p := range cfg.Peers {
		peers[address.CanonicalHost(strings.TrimSpace(host))] = p
	}
	cfg.Peers = peers
	records, err := journal.Open(filepath.Join(cfg.StateDir, "homeserver-moves"), "move record")
	if err != nil {
		return nil, fmt.Errorf("mover: %w", err)
	}
	m := &Mover{cfg: cfg, log: log.With().Str("component", "mover").Logger(), hooks: hooks, records: records}
	if err := os.MkdirAll(filepath.Dir(cfg.Userdb), 0o755); err != nil {
		return nil, fmt.Errorf("mover: userdb dir: %w", err)
	}
	f, err := os.OpenFile(cfg.Userdb, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("mover: userdb: %w", err)
	}
	f.Close()
	return m, nil
}

func (m *Mover) at(step string) error {
	if m.hooks.At == nil {
		return nil
	}
	return m.hooks.At(step)
}

// MoveAway copies mv's mailbox to its new home server, verifies the copy,
// then calls remove (the mailbox handler's delete policy), then forgets
// the move. Every step is idempotent; a retryable error leaves the record
// for the retry. A permanent error means nothing was removed.
func (m *Mover) MoveAway(ctx context.Context, mv Move, remove func(context.Context) error) error {
	mv.To = address.CanonicalHost(strings.TrimSpace(mv.To))
	if err := validMove(mv); err != nil {
		return fault.Permanentf("move mail of entry %s (uuid %s) to %s: %w; nothing moved", mv.DN, mv.UUID, mv.To, err)
	}
	rec, err := m.load(mv.UUID)
	if err != nil {
		return err
	}
	if rec == nil || rec.Move != mv {
		if rec != nil {
			m.log.Warn().Str("dn", mv.DN).Str("uuid", mv.UUID).Str("old_to", rec.Move.To).Str("to", mv.To).
				Msg("replacing the record of a different move of this entry")
		}
		if _, ok := m.cfg.Peers[mv.To]; !ok {
			return fault.Permanentf("move mail of entry %s (uuid %s) to %s: no peers.%s in the config; "+
				"nothing moved or deleted, the mail stays at %s", mv.DN, mv.UUID, mv.To, mv.To, mv.Home)
		}
		if _, err := os.Lstat(mv.Home); errors.Is(err, fs.ErrNotExist) {
			// Nothing to move (the user never got mail here).
			if err := m.finish(ctx, mv, remove, false); err != nil {
				return err
			}
			return nil
		} else if err != nil {
			return fault.Retryable(fmt.Errorf("move mail of entry %s: %w", mv.DN, err))
		}
		rec = &moveRecord{V: 1, Move: mv, At: time.Now().UTC()}
		if err := m.save(rec); err != nil {
			return err
		}
		if err := m.at("moveaway:intent"); err != nil {
			return err
		}
	}
	if !rec.Verified {
		peer, ok := m.cfg.Peers[mv.To]
		if !ok {
			err := fault.Permanentf("move mail of entry %s (uuid %s) to %s: no peers.%s in the config; "+
				"nothing moved or deleted, the mail stays at %s", mv.DN, mv.UUID, mv.To, mv.To, mv.Home)
			return errors.Join(err, m.forget(ctx, mv))
		}
		if err := m.copy(ctx, mv, peer); err != nil {
			return err
		}
		rec.Verified = true
		if err := m.save(rec); err != nil {
			return err
		}
		if err := m.at("moveaway:verified"); err != nil {
			return err
		}
	}
	return m.finish(ctx, mv, remove, true)
}

// finish applies the delete policy and forgets the move.
func (m *Mover) finish(ctx context.Context, mv Move, remove func(context.Context) error, moved bool) error {
	if remove != nil {
		if err := remove(ctx); err != nil {
			return err
		}
		if err := m.at("moveaway:removed"); err != nil {
			return err
		}
	}
	if err := m.forget(ctx, mv); err != nil {
		return err
	}
	if moved {
		m.log.Info().Str("dn", mv.DN).Str("uuid", mv.UUID).Str("user", mv.User).Str("to", mv.To).
			Msg("mail moved to the new home server")
	}
	return m.at("moveaway:done")
}

// forget takes the user out of the userdb and drops the record.
func (m *Mover) forget(ctx context.Context, mv Move) error {
	changed, err := m.setUserdb(mv.User, "")
	if err != nil {
		return err
	}
	if changed {
		if _, err := m.cfg.Local.FlushAuthCache(ctx, mv.User); err != nil {
			return fmt.Errorf("move mail of entry %s: %w", mv.DN, err)
		}
	}
	return m.drop(mv.UUID)
}

// copy makes the peer hold every message this host holds for mv.User.
func (m *Mover) copy(ctx context.Context, mv Move, peer Peer) error {
	what := fmt.Sprintf("move mail of entry %s (uuid %s) to %s", mv.DN, mv.UUID, mv.To)
	if _, err := m.setUserdb(mv.User, mv.Home); err != nil {
		return err
	}
	if err := m.resolve(ctx, mv); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	// Sessions opened before the home server changed could still change
	// the mail here after the copy; new ones are refused by the passdb.
	if err := m.cfg.Local.Kick(ctx, mv.User); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := m.at("moveaway:resolvable"); err != nil {
		return err
	}
	// Two-way: mail delivered to the new host meanwhile stays. Exit code 2
	// ("changes during sync", e.g. the new host created a mailbox a moment
	// ago) asks for another run, GUIDs aligned again.
	for attempt := 1; ; attempt++ {
		if err := m.alignGUIDs(ctx, mv, peer); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		err := m.cfg.Local.Sync(ctx, mv.User, peer.Dsync)
		var ce *dovecotadm.CommandError
		if err == nil {
			break
		}
		if attempt == 3 || !errors.As(err, &ce) || ce.ExitCode != 2 {
			return fmt.Errorf("%s: %w", what, peerErr(err))
		}
	}
	if err := m.at("moveaway:synced"); err != nil {
		return err
	}
	return m.verify(ctx, mv, peer, what)
}

// alignGUIDs gives the peer's mailboxes this host's GUIDs where both have
// a mailbox of the same name: each host created its INBOX (and default
// folders) with its own GUID, and dsync swaps differing GUIDs back and
// forth on every run instead of merging the mailboxes (Dovecot 2.3).
func (m *Mover) alignGUIDs(ctx context.Context, mv Move, peer Peer) error {
	src, err := m.cfg.Local.MailboxInfos(ctx, mv.User)
	if err != nil {
		return fmt.Errorf("read this host: %w", err)
	}
	dst, err := peer.Doveadm.MailboxInfos(ctx, mv.User)
	if err != nil {
		return fmt.Errorf("read the new home server: %w", peerErr(err))
	}
	guids := map[string]string{}
	for _, b := range dst {
		guids[b.Name] = b.GUID
	}
	for _, a := range src {
		if g, ok := guids[a.Name]; ok && a.GUID != "" && g != a.GUID {
			if err := peer.Doveadm.SetMailboxGUID(ctx, mv.User, a.Name, a.GUID); err != nil {
				return peerErr(err)
			}
		}
	}
	return nil
}

// verify compares messages per folder: the new host must hold at least as
// many as this one (more when mail arrived there during the move).
func (m *Mover) verify(ctx context.Context, mv Move, peer Peer, what string) error {
	src, err := m.cfg.Local.MailboxInfos(ctx, mv.User)
	if err != nil {
		return fmt.Errorf("%s: verify: %w", what, err)
	}
	dst, err := peer.Doveadm.MailboxInfos(ctx, mv.User)
	if err != nil {
		return fmt.Errorf("%s: verify: %w", what, peerErr(err))
	}
	have := map[string]int{}
	for _, b := range dst {
		have[b.Name] = b.Messages
	}
	var short []string
	for _, a := range src {
		if n, ok := have[a.Name]; !ok || n < a.Messages {
			short = append(short, fmt.Sprintf("%s (%d here, %d there)", a.Name, a.Messages, n))
		}
	}
	if len(short) > 0 {
		return fault.Retryable(fmt.Errorf("%s: verify: the new home server lacks mail in %s; nothing deleted",
			what, strings.Join(short, ", ")))
	}
	return nil
}

// peerErr: the new home server not knowing the user yet (its handler, or
// its negative auth cache, is behind) is worth waiting for.
func peerErr(err error) error {
	if errors.Is(err, dovecotadm.ErrUnknownUser) {
		return fault.Retryable(err)
	}
	return err
}

// resolve waits until this host's Dovecot finds the user at the old home.
func (m *Mover) resolve(ctx context.Context, mv Move) error {
	deadline := time.Now().Add(m.cfg.ResolveTimeout)
	var last error
	for {
		if _, err := m.cfg.Local.FlushAuthCache(ctx, mv.User); err != nil {
			return err
		}
		home, err := m.cfg.Local.UserHome(ctx, mv.User)
		switch {
		case err == nil && filepath.Clean(home) == mv.Home:
			return nil
		case err == nil:
			last = fmt.Errorf("userdb gives home %s, want %s", home, mv.Home)
		default:
			last = err
		}
		if fault.IsRetryable(err) && !errors.Is(err, dovecotadm.ErrUnknownUser) {
			return err // Dovecot down: no use waiting here
		}
		if time.Now().After(deadline) {
			return fault.Retryable(fmt.Errorf("this host's Dovecot does not resolve %s through the passwd-file userdb %s "+
				"(is it in dovecot.conf for protocol doveadm? see README): %w", mv.User, m.cfg.Userdb, last))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// setUserdb puts user's line (home "" removes it) into the passwd-file,
// rewriting it atomically. It reports whether the file changed.
func (m *Mover) setUserdb(user, home string) (bool, error) {
	m.userdbMu.Lock()
	defer m.userdbMu.Unlock()
	data, err := os.ReadFile(m.cfg.Userdb)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fault.Retryable(fmt.Errorf("read %s: %w", m.cfg.Userdb, err))
	}
	lines := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if name, _, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
			lines[name] = line
		}
	}
	want := ""
	if home != "" {
		// user:password:uid:gid:gecos:home:shell:extra; uid and gid
		// empty: mail_uid and mail_gid apply.
		want = fmt.Sprintf("%s:::::%s::", user, home)
	}
	if lines[user] == want {
		return false, nil
	}
	if want == "" {
		delete(lines, user)
	} else {
		lines[user] = want
	}
	names := make([]string, 0, len(lines))
	for n := range lines {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("# users whose mail mailsync is moving to another home server; maintained by mailsync, do not edit\n")
	for _, n := range names {
		b.WriteString(lines[n])
		b.WriteByte('\n')
	}
	// Dovecot re-reads a passwd-file whose mtime (in seconds) or size
	// changed; within one second only the size tells, so it must differ.
	if b.Len() == len(data) {
		b.WriteString("#\n")
	}
	if err := atomicfile.Write(m.cfg.Userdb, []byte(b.String()), 0o644); err != nil {
		return false, fault.Retryable(fmt.Errorf("write %s: %w", m.cfg.Userdb, err))
	}
	return true, nil
}

// validMove rejects what cannot go into a passwd-file line or name a file.
func validMove(mv Move) error {
	for _, f := range []struct{ name, v string }{{"user", mv.User}, {"home", mv.Home}} {
		if f.v == "" || strings.ContainsAny(f.v, ":\n\r\x00") {
			return fmt.Errorf("%s %q cannot go into a passwd-file", f.name, f.v)
		}
	}
	if !filepath.IsAbs(mv.Home) || filepath.Clean(mv.Home) != mv.Home {
		return fmt.Errorf("home %q is not a clean absolute path", mv.Home)
	}
	if _, err := address.Host("home server", mv.To); err != nil {
		return err
	}
	if mv.UUID == "" || strings.ContainsAny(mv.UUID, "/\\.\x00") {
		return fmt.Errorf("entryUUID %q cannot name a record", mv.UUID)
	}
	return nil
}

func (m *Mover) load(uuid string) (*moveRecord, error) {
	var rec moveRecord
	if ok, err := m.records.Load(uuid, &rec); !ok || err != nil {
		return nil, err
	}
	return &rec, nil
}

func (m *Mover) save(rec *moveRecord) error { return m.records.Save(rec.Move.UUID, rec) }

func (m *Mover) drop(uuid string) error { return m.records.Drop(uuid) }

// Pending lists the moves begun and not finished, by entryUUID.
func (m *Mover) Pending() []Move {
	uuids, _ := m.records.List()
	var out []Move
	for _, u := range uuids {
		if rec, err := m.load(u); err == nil && rec != nil {
			out = append(out, rec.Move)
		}
	}
	return out
}
