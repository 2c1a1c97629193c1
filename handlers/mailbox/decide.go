package mailbox

import (
	"mailsync/event"
	"mailsync/identity"
)

// Action is what the decision cascade asks of this host.
type Action int

const (
	// None: nothing to do on this host.
	None Action = iota
	// Create the mailbox of New.
	Create
	// Delete the mailbox of Old (subject to mail/dovecot/mailbox/delete).
	Delete
	// Move the mailbox of Old to New (the rename/delete matrix).
	Move
	// MovedAway: the home server changed from this host to another one
	// and mail/dovecot/mailbox/move_on_homeserver_change is on: copy the
	// mailbox of Old to host To as New, then apply the delete policy.
	MovedAway
)

func (a Action) String() string {
	switch a {
	case Create:
		return "create"
	case Delete:
		return "delete"
	case Move:
		return "move"
	case MovedAway:
		return "moved away"
	}
	return "none"
}

// Decision is an Action with the lowercased addresses it applies to.
type Decision struct {
	Action   Action
	Old, New string
	// To is the new home server of a MovedAway.
	To string
	// Branch is the number of the reference §1.3 branch that matched
	// (1–6), 0 when none did.
	Branch int
}

// Decide is UCS's decision cascade (reference §1.3) for a user event on
// the host fqdn: the first branch that matches wins. Addresses and home
// servers compare lowercased, first value only (§1.2). A modrdn is a
// modify with OldDN set and, in mailsync, old and new attributes both
// present, so it needs no special case: with the address unchanged no
// branch matches (UCS's `r`/`a` pickle dance, §1.7, is not needed).
func Decide(ev event.Event, fqdn string) Decision {
	return DecideWith(ev, fqdn, Policy{})
}

// Policy is what, beyond UCS, changes the cascade's answer.
type Policy struct {
	// MoveOnHomeChange is mail/dovecot/mailbox/move_on_homeserver_change.
	MoveOnHomeChange bool
}

// DecideWith is Decide under a policy. With MoveOnHomeChange, a change of
// the home server from this host to another named host, the entry keeping
// a primary address, is MovedAway instead of branch (2)'s Delete: the old
// host copies the mail to the new one before its delete policy applies.
// A home server set from or to empty (every host) stays UCS's (2) and (5).
func DecideWith(ev event.Event, fqdn string, p Policy) Decision {
	hasOld := ev.Op != event.OpAdd && len(ev.Old) > 0
	hasNew := ev.Op != event.OpDelete && len(ev.New) > 0
	var oldAddr, newAddr, oldHS, newHS string
	if hasOld {
		oldAddr = ev.Old.FirstLower(event.AttrPrimaryAddress)
		oldHS = ev.Old.FirstLower(event.AttrHomeServer)
	}
	if hasNew {
		newAddr = ev.New.FirstLower(event.AttrPrimaryAddress)
		newHS = ev.New.FirstLower(event.AttrHomeServer)
	}
	isOldHome := identity.Responsible(oldHS, fqdn)
	isNewHome := identity.Responsible(newHS, fqdn)

	switch {
	case hasNew && !hasOld && isNewHome: // (1) new object
		if newAddr != "" {
			return Decision{Action: Create, New: newAddr, Branch: 1}
		}
		return Decision{Branch: 1}
	case p.MoveOnHomeChange && hasNew && oldAddr != "" && newAddr != "" && isOldHome && !isNewHome &&
		oldHS != "" && newHS != "": // (2) on the old host, the mail moving with the user (beyond UCS, §1.9 item 2)
		return Decision{Action: MovedAway, Old: oldAddr, New: newAddr, To: newHS, Branch: 2}
	case oldAddr != "" && isOldHome && (newAddr == "" || !isNewHome): // (2) delete
		return Decision{Action: Delete, Old: oldAddr, Branch: 2}
	case !hasOld || !hasNew:
		return Decision{}
	case isNewHome && oldAddr == "" && newAddr != "": // (3) address added
		return Decision{Action: Create, New: newAddr, Branch: 3}
	case isOldHome && isNewHome && oldAddr != "" && newAddr != "" && oldAddr != newAddr: // (4) changed
		return Decision{Action: Move, Old: oldAddr, New: newAddr, Branch: 4}
	case isNewHome && !isOldHome && newAddr != "": // (5) moved here: empty mailbox, no data moves
		return Decision{Action: Create, New: newAddr, Branch: 5}
	case isNewHome && newHS != oldHS && newAddr != "": // (6) '' <-> this host: harmless re-create
		return Decision{Action: Create, New: newAddr, Branch: 6}
	}
	return Decision{}
}
