package listener

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
)

// Flavor is a directory server's dialect of RFC 4533 content
// synchronisation. The listener speaks the same protocol to both; they
// differ in where a change's id comes from and in what the server forgets to
// report.
type Flavor string

const (
	// FlavorOpenLDAP is slapd's syncprov overlay: the sync state control
	// carries the entryUUID, and every entry has an entryCSN. The zero
	// value means this flavor.
	FlavorOpenLDAP Flavor = "openldap"
	// Flavor389DS is 389 Directory Server's Content Synchronization plugin
	// on top of the retro changelog (with nsslapd-attribute:
	// nsuniqueid:targetUniqueId). It differs from syncprov in three ways the
	// listener makes up for:
	//   - the UUID in the sync state control is the entry's nsUniqueId in
	//     UUID form (UUIDFromNsUniqueID), not its entryUUID; it is as stable
	//     across renames and moves.
	//   - there is no entryCSN. An id begins with the entry's modifyTimestamp,
	//     the change's time (event.ChangeTime). In persist mode each entry
	//     carries a cookie ending in the retro changelog's change number,
	//     which is the rest of the id. Entries sent while refreshing carry no
	//     cookie; the rest of their id is the change number the session
	//     started from and a digest of DN and followed attributes — the same
	//     for a replay of the same state, different for any other.
	//   - resuming from a cookie, the plugin reports deleted entries but not
	//     those that stopped matching the filter (objectClass removed) or
	//     left the base while the listener was away. So before every resumed
	//     session the listener lists the nsUniqueIds the filter matches now;
	//     the refresh then ends in present mode, and a known entry neither
	//     listed nor sent becomes a delete (under the mass-delete guard). An
	//     entry that stops matching in the few milliseconds between that
	//     listing and the start of the sync search is still missed.
	Flavor389DS Flavor = "389ds"
)

// ParseFlavor accepts the names a config file uses: "openldap" (or empty)
// and "389ds".
func ParseFlavor(s string) (Flavor, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", string(FlavorOpenLDAP):
		return FlavorOpenLDAP, nil
	case string(Flavor389DS), "389-ds", "389":
		return Flavor389DS, nil
	}
	return "", fmt.Errorf("unknown directory flavor %q (want openldap or 389ds)", s)
}

func (f Flavor) is389() bool { return f == Flavor389DS }

// attrs are the operational attributes requested besides the followed ones.
func (f Flavor) attrs() []string { return []string{f.stampAttr()} }

// stampAttr is the operational attribute that dates an entry's last change.
func (f Flavor) stampAttr() string {
	if f.is389() {
		return "modifyTimestamp"
	}
	return "entryCSN"
}

// csn is the id of the change that produced entry dn (with followed
// attributes a and stampAttr value stamp): it goes into the Nats-Msg-Id and
// must differ between two changes of an entry, and stay the same when the
// same change is replayed. cookie is the entry's own sync cookie, start the
// session's.
func (f Flavor) csn(dn, stamp string, a event.Attrs, cookie, start []byte) string {
	if !f.is389() {
		return stamp
	}
	// The modifyTimestamp comes first: it is the change's time
	// (event.ChangeTime), which tells a home made after the change.
	at := ""
	if stamp != "" {
		at = stamp + "#"
	}
	if n, ok := changeNumber(cookie); ok {
		return at + "cn" + strconv.FormatUint(n, 10)
	}
	from, _ := changeNumber(start)
	h := fnv.New64a()
	h.Write([]byte(dn))
	fmt.Fprintf(h, "\x00%016x", attrSum(a))
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

// beforeSync runs before the sync search, on a connection of its own from
// dial. For 389-DS resuming from a cookie it lists the entries the filter
// matches now and turns the refresh into a present-mode one (see
// Flavor389DS).
func (f Flavor) beforeSync(ctx context.Context, dial func() (*ldap.Conn, error), cfg Config, rf *refresh) error {
	if !f.is389() || rf.cookie == nil {
		return nil
	}
	conn, err := dial()
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
		id, err := UUIDFromNsUniqueID(e.GetAttributeValue("nsUniqueId"))
		if err != nil {
			return fmt.Errorf("entry %s: %w", e.DN, err)
		}
		rf.seen[id] = struct{}{}
	}
	rf.present = true
	return nil
}

// UUIDFromNsUniqueID turns a 389-DS nsUniqueId (four groups of eight hex
// digits) into the UUID the Content Synchronization plugin sends for the
// entry in the sync state control.
func UUIDFromNsUniqueID(id string) (string, error) {
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
