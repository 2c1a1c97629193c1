package listener

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/go-ldap/ldap/v3"

	"mailsync/config"
	"mailsync/event"
)

// DS389 is 389 Directory Server's Content Synchronization plugin on top of
// the retro changelog (with nsslapd-attribute: nsuniqueid:targetUniqueId).
// It differs from syncprov in three ways the listener makes up for:
//   - the UUID in the sync state control is the entry's nsUniqueId in UUID
//     form (uuidFromNsUniqueID), not its entryUUID; it is as stable across
//     renames and moves.
//   - there is no entryCSN. A change id begins with the entry's
//     modifyTimestamp, the change's time (event.ChangeTime), to the second.
//     In persist mode each entry carries a cookie ending in the retro
//     changelog's change number, which is the rest of the id. Entries sent
//     while refreshing (and read by a plain search) carry no cookie; the
//     rest of their id is the change number the session started from and a
//     digest of DN and followed attributes — the same for a replay of the
//     same state, different for any other.
//   - resuming from a cookie, the plugin reports deleted entries but not
//     those that stopped matching the filter (objectClass removed) or left
//     the base while the listener was away. So before every resumed session
//     the listener lists the nsUniqueIds the filter matches now; the refresh
//     then ends in present mode, and a known entry neither listed nor sent
//     becomes a delete (under the mass-delete guard). An entry that stops
//     matching in the few milliseconds between that listing and the start of
//     the sync search is still missed.
type DS389 struct{}

func (DS389) Name() string { return config.Flavor389DS }

func (DS389) Attributes() []string { return []string{"nsUniqueId", "modifyTimestamp"} }

func (DS389) syncAttributes() []string { return []string{"modifyTimestamp"} }

func (DS389) Identity(e Entry) (string, error) { return uuidFromNsUniqueID(e.Attr("nsUniqueId")) }

func (DS389) ChangeID(s Sent) string {
	at := ""
	if stamp := s.Entry.Attr("modifyTimestamp"); stamp != "" {
		at = stamp + "#"
	}
	if n, ok := changeNumber(s.Cookie); ok {
		return at + "cn" + strconv.FormatUint(n, 10)
	}
	from, _ := changeNumber(s.Start)
	h := fnv.New64a()
	h.Write([]byte(s.DN))
	fmt.Fprintf(h, "\x00%016x", attrSum(s.Attrs))
	return fmt.Sprintf("%sr%d.%016x", at, from, h.Sum64())
}

// changeNumber reads the retro changelog change number that ends a 389-DS
// sync cookie: "host:port#binddn:base:filter#N".
func changeNumber(cookie []byte) (uint64, bool) {
	c := string(cookie)
	i := strings.LastIndexByte(c, '#')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(c[i+1:], 10, 64)
	return n, err == nil
}

// beforeSync, resuming from a cookie, lists the entries the filter matches
// now and turns the refresh into a present-mode one (see DS389).
func (f DS389) beforeSync(ctx context.Context, dial func(context.Context) (*ldap.Conn, error), cfg Config, rf *refresh) error {
	if rf.cookie == nil {
		return nil
	}
	conn, err := dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	// go-ldap's search takes no context: closing the connection ends it.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	res, err := conn.SearchWithPaging(ldap.NewSearchRequest(cfg.BaseDN, ldap.ScopeWholeSubtree,
		ldap.NeverDerefAliases, 0, 0, false, event.Filter, []string{"nsUniqueId"}, nil), 1000)
	if err != nil {
		return fmt.Errorf("list entries on %s before resuming: %w", cfg.URL, err)
	}
	for _, e := range res.Entries {
		id, err := f.Identity(searchEntry{e})
		if err != nil {
			return fmt.Errorf("entry %s: %w", e.DN, err)
		}
		rf.seen[id] = struct{}{}
	}
	rf.present = true
	return nil
}

// uuidFromNsUniqueID turns a 389-DS nsUniqueId (four groups of eight hex
// digits) into the UUID the Content Synchronization plugin sends for the
// entry in the sync state control.
func uuidFromNsUniqueID(id string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(id, "-", ""))
	if len(h) != 32 {
		return "", fmt.Errorf("nsUniqueId %q: want 32 hex digits", id)
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", fmt.Errorf("nsUniqueId %q: not hex", id)
		}
	}
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32], nil
}
