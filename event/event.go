// Package event defines the one message every part of mailsync speaks: a
// directory change as the listener publishes it and the handlers consume it,
// and the stored state of an entry the listener keeps per entryUUID.
//
// The attributes mailsync follows, the LDAP filter that selects the entries,
// and the rule that gives an entry its kind live here and nowhere else, so the
// listener, the handlers and the tests agree on them.
package event

import (
	"strings"
	"time"
)

// Version is the event schema version carried in every message.
const Version = 1

// Op is what happened to an entry.
type Op string

const (
	OpAdd    Op = "add"
	OpModify Op = "modify"
	OpDelete Op = "delete"
)

// Kind is what sort of directory object an entry is.
type Kind string

const (
	KindUser   Kind = "user"
	KindGroup  Kind = "group"
	KindList   Kind = "list"
	KindFolder Kind = "folder"
	KindDomain Kind = "domain"
)

// Kinds lists every kind, in the order the listener's search names them.
var Kinds = []Kind{KindUser, KindGroup, KindList, KindFolder, KindDomain}

// Attribute names as the UCS schema spells them.
const (
	AttrObjectClass        = "objectClass"
	AttrUID                = "uid"
	AttrCN                 = "cn"
	AttrPrimaryAddress     = "mailPrimaryAddress"
	AttrAlternativeAddress = "mailAlternativeAddress"
	AttrForwardAddress     = "mailForwardAddress"
	AttrForwardCopyToSelf  = "mailForwardCopyToSelf"
	AttrHomeServer         = "univentionMailHomeServer"
	AttrQuota              = "univentionMailUserQuota"
	AttrUniqueMember       = "uniqueMember"
	AttrMailMember         = "univentionMailMember"
	AttrCanonicalRewrite   = "univentionCanonicalRecipientRewriteEnabled"
	// AttrACL is a shared folder's ACL, "<identifier> <right>" per value
	// (reference §2).
	AttrACL = "univentionMailACL"
)

// Followed is the one list of attributes mailsync reads from the directory.
// A change to any other attribute is not an event.
var Followed = []string{
	AttrObjectClass, AttrUID, AttrCN,
	AttrPrimaryAddress, AttrAlternativeAddress,
	AttrForwardAddress, AttrForwardCopyToSelf,
	AttrHomeServer, AttrQuota,
	AttrUniqueMember, AttrMailMember, AttrCanonicalRewrite, AttrACL,
}

// Filter selects every entry mailsync follows: users (univentionMail, as
// UCS's listener filter, reference §1.1), groups (posixGroup, §3.3), mailing
// lists, shared folders and mail domains.
const Filter = "(|(&(objectClass=univentionMail)(uid=*))(objectClass=posixGroup)(objectClass=univentionMailList)(objectClass=univentionMailSharedFolder)(objectClass=univentionMailDomainname))"

var canonical = func() map[string]string {
	m := make(map[string]string, len(Followed))
	for _, a := range Followed {
		m[strings.ToLower(a)] = a
	}
	return m
}()

// CanonicalAttr returns the schema spelling of a followed attribute name, and
// false for one mailsync does not follow.
func CanonicalAttr(name string) (string, bool) {
	c, ok := canonical[strings.ToLower(name)]
	return c, ok
}

// Attrs holds an entry's followed attributes, keyed by their schema spelling.
type Attrs map[string][]string

// First returns the first value of an attribute, or "". UCS reads only the
// first value of single-valued mail attributes (reference §1.2).
func (a Attrs) First(name string) string {
	if v := a[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// FirstLower is First lowercased and trimmed: how addresses and home servers
// are compared (reference §1.2). It does not validate: a value with white
// space around it is refused by package address before it is used, never
// trimmed into another address.
func (a Attrs) FirstLower(name string) string {
	return strings.ToLower(strings.TrimSpace(a.First(name)))
}

// HasClass reports whether the objectClass attribute names class,
// compared case-insensitively as LDAP does.
func (a Attrs) HasClass(class string) bool {
	for _, c := range a[AttrObjectClass] {
		if strings.EqualFold(c, class) {
			return true
		}
	}
	return false
}

// Equal reports whether two attribute sets hold the same values in the same
// order.
func (a Attrs) Equal(b Attrs) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if av[i] != bv[i] {
				return false
			}
		}
	}
	return true
}

// KindOf classifies an entry by its object classes; ok is false for an entry
// mailsync does not follow. A shared folder is tested before a user, a list
// and a domain before a group, since the classes may be combined.
func KindOf(a Attrs) (Kind, bool) {
	switch {
	case a.HasClass("univentionMailSharedFolder"):
		return KindFolder, true
	case a.HasClass("univentionMailDomainname"):
		return KindDomain, true
	case a.HasClass("univentionMailList"):
		return KindList, true
	case a.HasClass("univentionMail") && len(a[AttrUID]) > 0:
		return KindUser, true
	case a.HasClass("posixGroup"):
		return KindGroup, true
	}
	return "", false
}

// Event is one directory change. Old is the state the listener last
// published for the entry (empty on add); New is the state now (empty on
// delete). A modrdn is one modify with OldDN set.
type Event struct {
	V     int       `json:"v"`
	Op    Op        `json:"op"`
	Kind  Kind      `json:"kind"`
	UUID  string    `json:"uuid"`
	DN    string    `json:"dn"`
	OldDN string    `json:"old_dn,omitempty"`
	Old   Attrs     `json:"old,omitempty"`
	New   Attrs     `json:"new,omitempty"`
	CSN   string    `json:"csn,omitempty"`
	At    time.Time `json:"at"`
}

// Entry is the listener's stored copy of what it last published for one
// entryUUID (KV bucket "entries"). Handlers that derive state from the whole
// directory (the maps) read these.
type Entry struct {
	UUID  string `json:"uuid"`
	DN    string `json:"dn"`
	Kind  Kind   `json:"kind"`
	Attrs Attrs  `json:"attrs"`
	CSN   string `json:"csn,omitempty"`
}

// A change id (Event.CSN, Entry.CSN) names one change of an entry: a replay
// of the change carries the same id, another change of the entry another
// one. It begins with the time of the change as LDAP generalized time, up to
// the first '#': OpenLDAP's entryCSN is such an id as the directory writes it
// ("20261125154404.854073Z#000000#000#000000"), and the listener makes the
// ids of 389-DS changes, which have no CSN, so (listener.Flavor). The time is
// what tells a mail home created after a change from one that predates it.

// ChangeTime is the time a change id begins with; ok is false for an id
// that carries none. The precision is the directory's: microseconds in an
// entryCSN, whole seconds in a 389-DS modifyTimestamp.
func ChangeTime(csn string) (t time.Time, ok bool) {
	ts, _, _ := strings.Cut(csn, "#")
	t, err := time.Parse("20060102150405.999999Z", ts)
	return t, err == nil
}

// MsgID is the JetStream de-duplication id of an event: the same change
// published twice (a replay after a crash) carries the same id.
func (e Event) MsgID() string {
	return e.UUID + ":" + string(e.Op) + ":" + e.CSN
}

// Subject is the stream subject an event is published on.
func (e Event) Subject() string {
	return SubjectPrefix + "." + string(e.Kind) + "." + e.UUID
}

// SubjectPrefix starts every event subject: mailsync.<kind>.<entryUUID>.
const SubjectPrefix = "mailsync"

// NewAttrs keeps the followed attributes of raw, whatever the case of their
// names, under their schema spelling. Attributes with no values are dropped.
func NewAttrs(raw map[string][]string) Attrs {
	a := make(Attrs, len(raw))
	for name, vals := range raw {
		c, ok := CanonicalAttr(name)
		if !ok || len(vals) == 0 {
			continue
		}
		a[c] = append(a[c], vals...)
	}
	return a
}
