package mailbox

import (
	"fmt"
	"sort"
	"strings"

	"mailsync/address"
	"mailsync/event"
	"mailsync/identity"
)

// The handler is level-triggered: an event only says which entry to look
// at. For that entry it compares three things and plans the steps between
// them (Plan, a pure function of its input):
//   - the entry's current state (the newest the listener published, not the
//     event's New: a stale or redelivered event is only a trigger);
//   - the state last applied on this host, recorded per entry in the state
//     dir once every step succeeded (applied.go);
//   - the homes this host's spool holds for the entry (owner markers,
//     indexed at start and kept current, index.go).
//
// The decision is UCS's cascade (Decide, reference §1.3) on the transition
// from the last applied state to the current one, which is how UCS folds
// (reference §4.7): A→B→C applied late is A→C. The homes then say where the
// steps start: a home the entry owns somewhere else than the last applied
// address (a crash between a rename and its record) is the one that moves.

// State is the part of an entry the mailbox handler acts on.
type State struct {
	DN string `json:"dn"`
	// Address is the first mailPrimaryAddress, lowercased and trimmed.
	Address string `json:"address,omitempty"`
	// HomeServer is the first univentionMailHomeServer as a canonical
	// host name (lowercased, a trailing dot dropped).
	HomeServer string `json:"home_server,omitempty"`
	CSN        string `json:"csn,omitempty"`
	// Folder marks a shared folder (folder.go); ACL is its canonical
	// univentionMailACL.
	Folder bool   `json:"folder,omitempty"`
	ACL    string `json:"acl,omitempty"`
	// Refused says why the address rule (package address) refuses the
	// entry's primary address or home server as stored; such a state is
	// never applied, and nothing is done for it.
	Refused error `json:"-"`
}

// StateOf is the state of a user or shared folder entry; ok is false for
// an entry of another kind (it has no mailbox).
func StateOf(e event.Entry) (State, bool) {
	if e.Kind == event.KindFolder {
		return folderState(e), true
	}
	if e.Kind != event.KindUser {
		return State{}, false
	}
	return State{DN: e.DN, Address: e.Attrs.FirstLower(event.AttrPrimaryAddress),
		HomeServer: address.CanonicalHost(e.Attrs.FirstLower(event.AttrHomeServer)), CSN: e.CSN,
		Refused: refused(e.Attrs)}, true
}

// same reports whether two states ask the same of a mail host.
func same(a, b *State) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Address == b.Address && a.HomeServer == b.HomeServer && a.ACL == b.ACL
}

// attrs is the state as the attributes Decide reads.
func (s *State) attrs() event.Attrs {
	a := event.Attrs{event.AttrObjectClass: {"univentionMail"}}
	if s.Address != "" {
		a[event.AttrPrimaryAddress] = []string{s.Address}
	}
	if s.HomeServer != "" {
		a[event.AttrHomeServer] = []string{s.HomeServer}
	}
	return a
}

// Transition is the event from one state to another, as Decide reads it.
func Transition(uuid string, from, to *State) event.Event {
	ev := event.Event{V: event.Version, Kind: event.KindUser, UUID: uuid}
	switch {
	case from == nil && to == nil:
		ev.Op = event.OpModify
	case from == nil:
		ev.Op, ev.New = event.OpAdd, to.attrs()
	case to == nil:
		ev.Op, ev.Old = event.OpDelete, from.attrs()
	default:
		ev.Op, ev.Old, ev.New = event.OpModify, from.attrs(), to.attrs()
	}
	if to != nil {
		ev.DN, ev.CSN = to.DN, to.CSN
	} else if from != nil {
		ev.DN = from.DN
	}
	return ev
}

// Home is a home directory on this host's spool.
type Home struct {
	Path string
	// Address is the address the home's path stands for (its marker's).
	Address string
	// Owner is the home's marker; Owner.UUID is "" for a home without one.
	Owner Owner
	// OwnerHolds: the owner's current state still gives it this address
	// on this host (the address is in use twice). Only for homes of
	// another entry.
	OwnerHolds bool
	// OwnerSettled: the owner's last applied state is its current one, so
	// no step of its own will move this home any more. Only for homes of
	// another entry.
	OwnerSettled bool
}

// Input is what Plan decides from.
type Input struct {
	UUID string
	// Current is the entry's newest state; nil when it is gone (deleted,
	// out of the filter, no longer a user).
	Current *State
	// Applied is the state last applied on this host; nil when none was.
	Applied *State
	// Homes are the homes on this spool whose marker names UUID.
	Homes []Home
	// Target is what is at the current address's home path, nil when
	// nothing is (or there is no current address).
	Target *Home
}

// Settings are the parts of the config Plan reads.
type Settings struct {
	Host                             string
	Rename, Delete, MoveOnHomeChange bool
	Layout                           Layout
	// Public is the layout of the public folders' homes (public.go);
	// zero: public folders are refused.
	Public Layout
}

// StepKind is one kind of step of a plan.
type StepKind int

const (
	// StepAttic moves a home another entry left behind (kept by policy)
	// out of the way into the attic, where no login reaches it.
	StepAttic StepKind = iota + 1
	// StepCreate makes the mailbox of Address (INBOX, folders, marker).
	StepCreate
	// StepMove renames the home of From to Address's.
	StepMove
	// StepTrash deletes a home (delete=yes).
	StepTrash
	// StepKeep logs Address out and flushes the auth cache; its home
	// stays on disk (delete=no).
	StepKeep
	// StepMoveAway copies the mail of From to host To as Address, then
	// applies the delete policy (move_on_homeserver_change).
	StepMoveAway
	// StepACL gives a shared folder's INBOX its ACL (folder.go).
	StepACL
	// StepPublish records the entry's public folder as Address ("": none)
	// and has Dovecot serve the public folders recorded (public.go).
	StepPublish
)

// Step is one step of a plan.
type Step struct {
	Kind    StepKind
	Address string // the address the step makes, keeps or gives up
	From    string // StepMove, StepMoveAway: the address whose home moves
	// FromPath is the home a StepMove renames.
	FromPath string
	To       string // StepMoveAway: the new home server
	Path     string // the home the step works on
	Home     *Home  // StepAttic, StepTrash: the home
	// ACL and OldACL: StepACL's ACL to set and the one it replaces.
	ACL, OldACL string
}

// String says what the step does, for `mailsync plan` and `check`.
func (s Step) String() string {
	switch s.Kind {
	case StepAttic:
		return fmt.Sprintf("move %s, left by entry %s (uuid %s, address %q), into the attic", s.Path, s.Home.Owner.DN, s.Home.Owner.UUID, s.Home.Owner.Address)
	case StepCreate:
		if n := publicName(s.Address); n != "" {
			return fmt.Sprintf("create public folder %s at %s", n, s.Path)
		}
		return fmt.Sprintf("create mailbox of %s at %s", s.Address, s.Path)
	case StepMove:
		return fmt.Sprintf("move %s -> %s, mail kept", s.FromPath, s.Path)
	case StepTrash:
		return fmt.Sprintf("delete %s (to the trash, then removed)", s.Path)
	case StepKeep:
		if n := publicName(s.Address); n != "" {
			return fmt.Sprintf("keep %s on disk (mail/dovecot/mailbox/delete=no); public folder %s is no longer served", s.Path, n)
		}
		return fmt.Sprintf("keep %s on disk (mail/dovecot/mailbox/delete=no); %s is logged out and the auth cache flushed", s.Path, s.Address)
	case StepMoveAway:
		return fmt.Sprintf("copy the mail of %s (%s) to %s as %s, verify, then apply the delete policy", s.From, s.Path, s.To, s.Address)
	case StepACL:
		acl := strings.ReplaceAll(s.ACL, "\n", ", ")
		if acl == "" {
			acl = "no entries"
		}
		if n := publicName(s.Address); n != "" {
			return fmt.Sprintf("set the ACL of public folder %s/INBOX: %s", n, acl)
		}
		return fmt.Sprintf("set the ACL of shared folder %s: %s", s.Address, acl)
	case StepPublish:
		if n := publicName(s.Address); n != "" {
			return fmt.Sprintf("serve public folder %s (Dovecot namespace %s/)", n, n)
		}
		return fmt.Sprintf("stop serving public folder %s", publicName(s.From))
	}
	return "?"
}

// Plan is what converging one entry on this host takes.
type Plan struct {
	UUID     string
	Decision Decision
	Steps    []Step
	// Kept are homes of the entry that stay on disk by policy (delete=no,
	// rename=no) and that no address of the entry reaches any more.
	Kept []Home
	// Refused is a permanent refusal naming the entry; nothing is done.
	Refused error
	// Wait is why the plan cannot run yet (another entry's change that
	// frees the address is not applied yet); the handler retries.
	Wait string
	// Folder: the entry is a shared folder (its mailbox has INBOX only).
	Folder bool
}

// Done reports whether the host is converged for the entry.
func (p Plan) Done() bool { return len(p.Steps) == 0 && p.Refused == nil && p.Wait == "" }

// PlanFor is the plan that converges the host to in.Current: the steps the
// handler executes, and what `mailsync plan` and `check` print.
func PlanFor(in Input, s Settings) Plan {
	p := Plan{UUID: in.UUID}
	if c := in.Current; (c != nil && c.Folder) || (c == nil && in.Applied != nil && in.Applied.Folder) {
		// Reference §2: a folder's address change always renames; its
		// mail does not follow a home server change.
		// Adding or removing the address is a change of its mailbox key
		// (an address or public/<cn>, public.go): a move like a rename.
		p.Folder, s.Rename, s.MoveOnHomeChange = true, true, false
	}
	p.Decision = DecideWith(Transition(in.UUID, in.Applied, in.Current), s.Host, Policy{MoveOnHomeChange: s.MoveOnHomeChange})
	dn := ""
	if in.Current != nil {
		dn = in.Current.DN
	} else if in.Applied != nil {
		dn = in.Applied.DN
	}
	who := fmt.Sprintf("entry %s (uuid %s)", dn, in.UUID)
	if c := in.Current; c != nil && c.Refused != nil {
		// A mailbox made, moved or deleted on account of a mangled value
		// would be one Dovecot serves under another name, or lose mail
		// to a typo: nothing is done until the entry is fixed.
		p.Refused = fmt.Errorf("mailbox of %s: %w; nothing done", who, c.Refused)
		return p
	}
	path := func(addr string) (string, bool) {
		hp, err := keyPath(s.Layout, s.Public, addr)
		if err == nil {
			return hp, true
		}
		if p.Refused == nil {
			p.Refused = fmt.Errorf("mailbox of %s: %w", who, err)
		}
		return "", false
	}
	homeAt := func(pth string) *Home {
		for i := range in.Homes {
			if in.Homes[i].Path == pth {
				return &in.Homes[i]
			}
		}
		return nil
	}

	// want: the entry should have a mailbox here, at target.
	var want, target string
	if c := in.Current; c != nil && c.Address != "" && identity.Responsible(c.HomeServer, s.Host) {
		want = c.Address
		var ok bool
		if target, ok = path(want); !ok {
			return p
		}
	}
	// A home of another entry at the target: reused only once that entry
	// has let go of the address; then it goes to the attic first.
	clear := func() bool {
		t := in.Target
		if t == nil || t.Owner.UUID == "" || t.Owner.UUID == in.UUID {
			return true
		}
		switch {
		case t.OwnerHolds:
			stays := ""
			for _, h := range in.Homes {
				stays += "; its own mail stays at " + h.Path
			}
			p.Refused = fmt.Errorf("mailbox %s of %s: home %s belongs to entry %s (uuid %s), which has the address %q too; "+
				"nothing moved, merged or reused%s", want, who, t.Path, t.Owner.DN, t.Owner.UUID, t.Owner.Address, stays)
			return false
		case !t.OwnerSettled:
			p.Wait = fmt.Sprintf("home %s of address %s belongs to entry %s (uuid %s), whose change is not applied here yet",
				t.Path, want, t.Owner.DN, t.Owner.UUID)
			return false
		}
		p.Steps = append(p.Steps, Step{Kind: StepAttic, Address: want, Path: t.Path, Home: t})
		return true
	}
	targetOurs := in.Target != nil && in.Target.Owner.UUID == in.UUID
	// moved is the home a rename takes to the target.
	moved := ""
	create := func() {
		if clear() {
			p.Steps = append(p.Steps, Step{Kind: StepCreate, Address: want, Path: target})
		}
	}
	// move renames the old address's home (ours, or made before mailsync)
	// to the target, else a home the entry owns elsewhere (a rename whose
	// record a crash lost); with none, or the target ours already, it
	// creates.
	move := func(old string) {
		var from, fromPath string
		if old != "" {
			if op, ok := path(old); ok && op != target && homeAt(op) != nil {
				from, fromPath = old, op
			}
		}
		if from == "" {
			for _, h := range in.Homes {
				if h.Path != target {
					from, fromPath = h.Address, h.Path
					break
				}
			}
		}
		if from == "" && old != "" {
			// No marker: made before mailsync (UCS renames it too), or
			// not there at all; the step finds out which.
			if op, ok := path(old); ok && op != target {
				from, fromPath = old, op
			}
		}
		if from == "" || targetOurs {
			create()
			return
		}
		if clear() {
			moved = fromPath
			p.Steps = append(p.Steps, Step{Kind: StepMove, From: from, FromPath: fromPath, Address: want, Path: target})
		}
	}
	// giveUp applies the delete policy to the address the entry leaves:
	// with delete=no it is logged out (the home stays), with delete=yes
	// its home goes (ours, or made before mailsync; the step checks).
	giveUp := func(old string) {
		op, ok := path(old)
		if !ok || op == target {
			return
		}
		if !s.Delete {
			p.Steps = append(p.Steps, Step{Kind: StepKeep, Address: old, Path: op})
			return
		}
		if homeAt(op) == nil {
			p.Steps = append(p.Steps, Step{Kind: StepTrash, Address: old, Path: op, Home: &Home{Path: op, Address: old}})
		}
	}

	d := p.Decision
	switch d.Action {
	case Create:
		if s.Rename {
			// The entry's own mail, kept here (delete=no) while it was
			// away or without an address, follows it to the new address.
			move("")
		} else {
			create()
		}
	case Move:
		if s.Rename {
			move(d.Old)
		} else {
			// Table 14.4, rename=no: a new empty mailbox; the old one goes
			// only with delete=yes.
			create()
			giveUp(d.Old)
		}
	case Delete:
		giveUp(d.Old)
	case MovedAway:
		if op, ok := path(d.Old); ok {
			p.Steps = append(p.Steps, Step{Kind: StepMoveAway, From: d.Old, Address: d.New, To: d.To, Path: op})
		}
		return p
	case None:
		// Nothing changed since the last applied state, but the host may
		// still lack the mailbox (never applied, or its home went).
		switch {
		case want == "" || targetOurs:
		case in.Target == nil && s.Rename:
			move("")
		case in.Target == nil || in.Target.Owner.UUID != "":
			create()
		}
	}
	// The entry's other homes: gone with delete=yes, kept with delete=no.
	if p.Refused == nil && p.Wait == "" {
		for i := range in.Homes {
			h := &in.Homes[i]
			if h.Path == target || h.Path == moved {
				continue
			}
			if s.Delete {
				p.Steps = append(p.Steps, Step{Kind: StepTrash, Address: h.Address, Path: h.Path, Home: h})
			} else {
				p.Kept = append(p.Kept, *h)
			}
		}
	}
	if p.Folder && p.Refused == nil && p.Wait == "" {
		// Dovecot stops serving a public folder before its mail moves away
		// or goes, and serves one once its mail is in place.
		had, pub := "", ""
		if a := in.Applied; a != nil && publicName(a.Address) != "" && identity.Responsible(a.HomeServer, s.Host) {
			had = a.Address
		}
		if publicName(want) != "" {
			pub = want
		}
		if had != "" && had != pub {
			p.Steps = append([]Step{{Kind: StepPublish, From: had}}, p.Steps...)
		}
		if pub != "" && (had != pub || len(p.Steps) > 0) {
			p.Steps = append(p.Steps, Step{Kind: StepPublish, Address: pub, Path: target})
		}
	}
	if p.Folder && want != "" && p.Refused == nil && p.Wait == "" {
		// The ACL, when it changed or the mailbox is new or moved (Dovecot
		// keeps a moved mailbox's ACL; entries gone are removed).
		old := ""
		if in.Applied != nil {
			old = in.Applied.ACL
		}
		if len(p.Steps) > 0 || in.Applied == nil || in.Applied.ACL != in.Current.ACL || in.Applied.Address != want {
			p.Steps = append(p.Steps, Step{Kind: StepACL, Address: want, Path: target, ACL: in.Current.ACL, OldACL: old})
		}
	}
	if p.Refused != nil || p.Wait != "" {
		p.Steps = nil
	}
	sort.SliceStable(p.Kept, func(i, j int) bool { return p.Kept[i].Path < p.Kept[j].Path })
	return p
}

// String is the plan in words, one step a line.
func (p Plan) String() string {
	switch {
	case p.Refused != nil:
		return "refused, dead-lettered: " + p.Refused.Error()
	case p.Wait != "":
		return "waits: " + p.Wait
	case len(p.Steps) == 0:
		return "nothing to do"
	}
	var b strings.Builder
	for i, s := range p.Steps {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s.String())
	}
	if p.Decision.Branch > 0 {
		fmt.Fprintf(&b, " (reference §1.3 branch %d)", p.Decision.Branch)
	}
	return b.String()
}
