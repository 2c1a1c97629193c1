// Package homeserver routes users to their mail home server: the transport
// map (smtp:[home] for users homed elsewhere, as UCS's ldap.transport,
// reference §3.5), by the rule of which host is responsible for a user's
// mailbox (package identity). Moving the mail itself is package migrate.
//
// Guarantees:
//   - The transport map is derived state: Load rebuilds it from the whole
//     directory, each event updates the model, and the map is rewritten only
//     when its content changed. Handle returns after the map that contains
//     its change is in place, so the runner acks only durable work.
//   - Writes are atomic (temp file in the map dir, postmap, fsync, rename):
//     Postfix never sees a half-written map. Concurrent changes share a
//     write (group commit, postmap.Committer, as the aliases maps).
//   - Idempotent: every event carries the entry's whole state, so a replay
//     converges to the same map.
package homeserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"mailsync/address"
	"mailsync/config"
	"mailsync/event"
	"mailsync/fault"
	"mailsync/identity"
	"mailsync/postmap"
)

// TransportMap is the name of the table in the map dir; main.cf names it in
// transport_maps (e.g. hash:/etc/postfix/mailsync/transport).
const TransportMap = "transport"

// mapSuffix is the file postmap makes from a source file, per map type.
var mapSuffix = postmap.Suffixes

// Config configures the handler.
type Config struct {
	// Host is this mail host's FQDN (required): addresses homed here, or
	// nowhere, get no transport entry.
	Host string
	// Dir is where the transport map is written (required).
	Dir string
	// MapType is hash, lmdb or cdb (default hash, as UCS).
	MapType string
	// PostmapPath is the postmap binary (default /usr/sbin/postmap).
	PostmapPath string
	// PostfixConfigDir is passed to postmap as -c when set.
	PostfixConfigDir string
	// Coalesce is how long a change waits for others to share its write
	// (default 20ms; negative writes at once).
	Coalesce time.Duration
	// Installed, when set, learns each map installed and how long it took
	// (metrics).
	Installed func(table string, took time.Duration)
}

func (c *Config) setDefaults() error {
	if c.Host == "" {
		return errors.New("homeserver: Host (this host's FQDN) is required")
	}
	h, err := address.Host("Host", strings.TrimSpace(c.Host))
	if err != nil {
		return fmt.Errorf("homeserver: %w", err)
	}
	c.Host = h
	if c.Dir == "" {
		return errors.New("homeserver: Dir is required")
	}
	if c.MapType == "" {
		c.MapType = config.DefaultMapType
	}
	if _, ok := mapSuffix[c.MapType]; !ok {
		return fmt.Errorf("homeserver: MapType: %q is not one of hash, lmdb, cdb", c.MapType)
	}
	if c.PostmapPath == "" {
		c.PostmapPath = config.DefaultPostmap
	}
	if c.Coalesce == 0 {
		c.Coalesce = config.DefaultCoalesce
	}
	return nil
}

// route is one transport entry: mail for address goes to smtp:[home].
type route struct {
	address string // lowercased primary address
	home    string // the home server, canonical (address.Host)
}

// Handler keeps the transport map of one mail host.
type Handler struct {
	cfg Config

	mu      sync.Mutex
	routes  map[string]route // by entryUUID; only entries homed elsewhere
	gen     uint64           // bumped by every change of routes
	written uint64           // gen the live map reflects
	live    []byte           // source of the live map
	loaded  bool

	// commits makes the writes changes wait for (group commit), with the
	// writer the aliases handler uses too; Load writes in its place.
	commits *postmap.Committer
}

// New returns the handler; the map is first written by Load. Close stops
// its writer.
func New(cfg Config) (*Handler, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("homeserver: map dir: %w", err)
	}
	postmap.RemoveStale(cfg.Dir) // temp files a crash left
	h := &Handler{cfg: cfg, routes: map[string]route{}}
	w := &postmap.Writer{Dir: cfg.Dir, Type: cfg.MapType, Postmap: cfg.PostmapPath, ConfigDir: cfg.PostfixConfigDir,
		Installed: cfg.Installed}
	h.commits = postmap.NewCommitter(w, cfg.Coalesce, h.collect)
	return h, nil
}

// Close writes what is pending and stops the writer.
func (h *Handler) Close() error {
	h.commits.Close()
	return nil
}

// DerivedFromDirectory marks the maps as derived wholly from the directory:
// the runner skips events a Load already covers.
func (h *Handler) DerivedFromDirectory() {}

// Name is the handler's name in consumer names and logs.
// Name names the handler: in the config, its consumers and its log lines.
const Name = "homeserver"

// Name returns the handler's name.
func (h *Handler) Name() string { return Name }

// Route returns the transport entry of an entry's attributes on host: the
// lowercased primary address and the home server as a canonical host name
// when mail for it must be relayed to another host, ok false when it is
// delivered here (no home server, or this host) or has no primary address.
// Like ldap.transport, every kind with a primary address counts (users,
// shared folders, ...). A primary address or home server the address rule
// refuses (package address) is an error naming the attribute, whichever
// host the entry is homed on, as every handler refuses it.
// Departure from UCS (§3.5 returns the attribute as stored): the home
// server is lowercased in smtp:[...], its trailing dot dropped, so every
// host writes the same map.
func Route(a event.Attrs, host string) (addr, home string, ok bool, err error) {
	var errs []error
	if v := a.First(event.AttrPrimaryAddress); v != "" {
		if addr, err = address.Check(event.AttrPrimaryAddress, v); err != nil {
			errs = append(errs, err)
		}
	}
	if v := a.First(event.AttrHomeServer); v != "" {
		if home, err = address.Host(event.AttrHomeServer, v); err != nil {
			errs = append(errs, err)
		}
	}
	if err := address.Join(errs...); err != nil {
		return "", "", false, err
	}
	if addr == "" || identity.Responsible(home, host) {
		return "", "", false, nil
	}
	return addr, home, true, nil
}

// Load rebuilds the map from the whole directory and writes it, changed
// or not (the files must exist). An entry whose values cannot be written is
// left out; its events are dead-lettered by Handle.
func (h *Handler) Load(ctx context.Context, entries []event.Entry) error {
	routes := routesFor(h.cfg.Host, entries)
	return h.commits.Exclusive(ctx, func(ctx context.Context, w *postmap.Writer) error {
		h.mu.Lock()
		h.routes = routes
		h.gen++
		gen := h.gen
		src := render(routes)
		h.mu.Unlock()
		if err := w.Install(ctx, postmap.Table{Name: TransportMap, Src: src}); err != nil {
			return fault.Retryable(err)
		}
		h.mu.Lock()
		h.live, h.written, h.loaded = src, gen, true
		h.mu.Unlock()
		return nil
	})
}

// Handle applies one directory change to the map. It returns once the live
// map holds the change: at once when the change leaves the map's content as
// it is on disk, else after the write it joins.
func (h *Handler) Handle(ctx context.Context, ev event.Event) error {
	var r route
	var ok bool
	var rerr error
	if ev.Op != event.OpDelete {
		r.address, r.home, ok, rerr = Route(ev.New, h.cfg.Host)
	}
	h.mu.Lock()
	old, had := h.routes[ev.UUID]
	if had != ok || old != r {
		if ok {
			h.routes[ev.UUID] = r
		} else {
			delete(h.routes, ev.UUID)
		}
		h.gen++
	}
	var b *postmap.Batch
	var err error
	if !h.loaded || h.written < h.gen {
		b, err = h.commits.Join()
	}
	h.mu.Unlock()
	if b != nil {
		err = b.Wait(ctx)
	}
	if err != nil {
		return fault.Retryable(fmt.Errorf("transport map: %w", err))
	}
	if rerr != nil {
		return fault.Permanent(fmt.Errorf("transport for entry %s (uuid %s): %w; left out of the map", ev.DN, ev.UUID, rerr))
	}
	return nil
}

// collect is the first half of a write (postmap.Collect): the map as the
// routes are now, unless the live map already holds it.
func (h *Handler) collect() ([]postmap.Table, func(error) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	src := render(h.routes)
	gen := h.gen
	if h.loaded && string(src) == string(h.live) {
		h.written = gen
		return nil, nil
	}
	return []postmap.Table{{Name: TransportMap, Src: src}}, func(err error) error {
		if err != nil {
			return err
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.live, h.written, h.loaded = src, gen, true
		return nil
	}
}

// render writes the table source sorted by address. Two entries with one
// primary address (UDM prevents it) yield the entry with the lowest
// entryUUID, so the map is the same on every host and every rebuild.
func render(routes map[string]route) []byte {
	uuids := make([]string, 0, len(routes))
	for u := range routes {
		uuids = append(uuids, u)
	}
	sort.Strings(uuids)
	byAddr := make(map[string]string, len(routes))
	for _, u := range uuids {
		r := routes[u]
		if _, dup := byAddr[r.address]; !dup {
			byAddr[r.address] = r.home
		}
	}
	addrs := make([]string, 0, len(byAddr))
	for a := range byAddr {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	var b strings.Builder
	b.WriteString("# generated by mailsync (handlers/homeserver); do not edit\n")
	for _, a := range addrs {
		fmt.Fprintf(&b, "%s smtp:[%s]\n", a, byAddr[a])
	}
	return []byte(b.String())
}
