package mailbox

// Multi-step operations (a move, a delete): an intent record written
// before the first step and dropped after the last, so Load or the
// redelivered event completes one a crash interrupted; every step is
// idempotent and judged by what is on disk.

import (
	"context"
	"fmt"
	"time"

	"mailsync/fault"
)

// intent is the record of a multi-step operation, written before its first
// step and removed after its last.
type intent struct {
	V    int    `json:"v"`
	Op   string `json:"op"` // "move" or "delete"
	UUID string `json:"uuid"`
	DN   string `json:"dn"`
	Old  string `json:"old"`           // address whose home moves or goes
	New  string `json:"new,omitempty"` // move: the new address
	// Folders are made in the moved mailbox (none for a public folder);
	// unset: the handler's default folders (records before the field).
	Folders []string  `json:"folders,omitempty"`
	Ops     []pathOp  `json:"paths"`
	At      time.Time `json:"at"`
}

// pathOp moves (or, for a delete, trashes) one directory.
type pathOp struct {
	What string `json:"what"` // "home" or "index"
	Root string `json:"root"` // spool (or index) root the paths are confined to
	From string `json:"from"`
	To   string `json:"to"`            // new home, or the trash path for a delete
	Tmp  string `json:"tmp,omitempty"` // staging copy across filesystems
	// Verified: the staging copy was verified; from then on the copy is
	// the truth and the original may be deleted.
	Verified bool `json:"verified,omitempty"`
}

func (h *Handler) saveIntent(in *intent) error { return h.intents.Save(in.UUID, in) }

func (h *Handler) dropIntent(uuid string) error { return h.intents.Drop(uuid) }

// resume completes the recorded operation of an entry, if there is one. A
// permanent failure drops the record (the failing step moved nothing).
func (h *Handler) resume(ctx context.Context, uuid string) error {
	if !validUUID(uuid) {
		return nil
	}
	var in intent
	if ok, err := h.intents.Load(uuid, &in); !ok || err != nil {
		return err
	}
	h.log.Info().Str("uuid", in.UUID).Str("dn", in.DN).Str("op", in.Op).Str("old", in.Old).Str("new", in.New).
		Msg("completing an interrupted mailbox operation")
	err := h.run(ctx, &in)
	if fault.IsPermanent(err) {
		if derr := h.dropIntent(uuid); derr != nil {
			return derr
		}
	}
	return err
}

// run performs (or completes) an operation. Every step is idempotent.
func (h *Handler) run(ctx context.Context, in *intent) error {
	op := in.Op
	defer func() {
		// Keep the home index current whatever the steps got to.
		for _, p := range in.Ops {
			if p.What == "home" {
				h.homes.update(p.From)
				if op == "move" { // a delete's To is in the trash
					h.homes.update(p.To)
				}
			}
		}
	}()
	// A public folder is no Dovecot user: no session of its own to end.
	if publicName(in.Old) == "" {
		if err := h.adm.Kick(ctx, in.Old); err != nil {
			return fmt.Errorf("%s mailbox of entry %s: %w", op, in.DN, err)
		}
	}
	if err := h.at(op + ":kicked"); err != nil {
		return err
	}
	for i := range in.Ops {
		var err error
		if op == "move" {
			err = h.movePath(in, &in.Ops[i])
		} else {
			err = h.trashPath(in, &in.Ops[i])
		}
		if err != nil {
			return err
		}
	}
	if op == "move" {
		home := in.Ops[0].To
		if toPublic := publicName(in.New) != ""; toPublic != (publicName(in.Old) != "") {
			if ok, _ := exists(home); ok {
				if err := h.moveShape(home, toPublic); err != nil {
					return fault.Retryable(fmt.Errorf("move mailbox of entry %s: reshape %s: %w", in.DN, home, err))
				}
			}
		}
		if ok, _ := exists(home); ok {
			if err := writeMarker(home, marker{UUID: in.UUID, DN: in.DN, Address: in.New}); err != nil {
				return fault.Retryable(fmt.Errorf("mark home %s of entry %s: %w", home, in.DN, err))
			}
		}
		if err := h.at("move:marked"); err != nil {
			return err
		}
	}
	// The old address must stop logging in from the cache; a new address
	// must not stay unknown from a negative entry. UCS flushes the whole
	// cache (§1.5); the entry's own names are enough, and a burst of
	// renames does not empty everyone's cache once per rename.
	if _, err := h.adm.FlushAuthCache(ctx, cacheNames(in.DN, in.Old, in.New)...); err != nil {
		return fmt.Errorf("%s mailbox of entry %s: %w", op, in.DN, err)
	}
	if err := h.at(op + ":flushed"); err != nil {
		return err
	}
	if op == "move" && publicName(in.New) == "" {
		folders := in.Folders
		if len(folders) == 0 {
			folders = h.folders
		}
		if err := h.adm.CreateMailbox(ctx, in.New, folders...); err != nil {
			return fmt.Errorf("move mailbox of entry %s: %w", in.DN, err)
		}
		if err := h.at("move:created"); err != nil {
			return err
		}
	}
	return h.dropIntent(in.UUID)
}

// begin records the intent of a multi-step operation, then runs it; an
// operation that cannot succeed drops its intent.
func (h *Handler) begin(ctx context.Context, in *intent) error {
	if err := h.saveIntent(in); err != nil {
		return err
	}
	if err := h.at(in.Op + ":intent"); err != nil {
		return err
	}
	err := h.run(ctx, in)
	if fault.IsPermanent(err) {
		if derr := h.dropIntent(in.UUID); derr != nil {
			return derr
		}
	}
	return err
}
