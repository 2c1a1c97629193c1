package listener

// Turning syncrepl messages into events: an entry's change or delete, and
// the end of a refresh, where unseen entries become deletes.

import (
	"context"
	"time"

	"mailsync/event"
	"mailsync/listener/syncrepl"
)

type refresh struct {
	full    bool // no cookie: the refresh lists every entry
	present bool // present phase seen: unseen known entries are deleted
	seen    map[string]struct{}
	deletes map[string]struct{}
	cookie  []byte // the cookie the session started from
}

// handle processes one syncrepl message: an entry with its sync state, or a
// sync info message.
func (l *Listener) handle(ctx context.Context, m *syncrepl.Message, rf *refresh, refreshingp *bool) error {
	l.work.Lock()
	defer l.work.Unlock()
	refreshing := *refreshingp
	defer func() { *refreshingp = refreshing }()
	var newCookie []byte
	switch {
	case m.Kind == syncrepl.KindEntry && m.HasState:
		uuid := m.UUID.String()
		switch m.State {
		case syncrepl.StatePresent:
			rf.seen[uuid] = struct{}{}
			rf.present = true
		case syncrepl.StateAdd, syncrepl.StateModify:
			rf.seen[uuid] = struct{}{}
			delete(rf.deletes, uuid)
			if err := l.queueEntry(ctx, uuid, m, rf); err != nil {
				return err
			}
		case syncrepl.StateDelete:
			if refreshing {
				rf.deletes[uuid] = struct{}{}
			} else if err := l.queueDelete(ctx, uuid); err != nil {
				return err
			}
		}
		newCookie = m.Cookie
	case m.Kind == syncrepl.KindInfo:
		newCookie = m.Cookie
		switch m.Info {
		case syncrepl.InfoRefreshDelete, syncrepl.InfoRefreshPresent:
			if m.Info == syncrepl.InfoRefreshPresent {
				rf.present = true
			}
			if refreshing && m.RefreshDone {
				if err := l.endRefresh(ctx, rf); err != nil {
					return err
				}
				refreshing = false
				// What the refresh saw is of no use in the persist
				// phase, and at 100k entries it is megabytes held for
				// the session's life.
				rf.seen, rf.deletes = map[string]struct{}{}, map[string]struct{}{}
			}
		case syncrepl.InfoSyncIDSet:
			for _, u := range m.UUIDs {
				id := u.String()
				switch {
				case !m.RefreshDeletes:
					rf.seen[id] = struct{}{}
					rf.present = true
				case refreshing:
					rf.deletes[id] = struct{}{}
				default:
					if err := l.queueDelete(ctx, id); err != nil {
						return err
					}
				}
			}
		}
	}
	// In persist mode every change is published and stored at once:
	// the latency from the LDAP write to the event is one publish round
	// trip. A cookie is saved only once everything before it is stored.
	if !refreshing || len(newCookie) > 0 {
		if err := l.sync(ctx); err != nil {
			return err
		}
	} else if len(l.pending) >= l.cfg.BatchSize || l.pendingBytes >= l.cfg.BatchBytes {
		if err := l.flush(ctx); err != nil {
			return err
		}
	}
	if len(newCookie) > 0 {
		if err := l.saveCookie(ctx, newCookie); err != nil {
			return err
		}
	}
	return nil
}

func (l *Listener) queueEntry(ctx context.Context, uuid string, m *syncrepl.Message, rf *refresh) error {
	attrs := make(event.Attrs, len(m.Attributes))
	for _, a := range m.Attributes {
		addFollowed(attrs, a.Name, a.Values)
	}
	kind, ok := event.KindOf(attrs)
	if !ok {
		return l.queueDelete(ctx, uuid)
	}
	entry := event.Entry{UUID: uuid, DN: m.DN, Kind: kind, Attrs: attrs}
	entry.CSN = l.cfg.Flavor.ChangeID(Sent{Entry: m, DN: m.DN, Attrs: attrs, Cookie: m.Cookie, Start: rf.cookie})
	old, had := l.known[uuid]
	now := compact(entry)
	if had && old == now {
		// Nothing mailsync follows changed (a poison entry set back to
		// what was last published is fixed so): Change's Unchanged, told
		// by the digest without reading the published state.
		return l.clearPoison(ctx, uuid)
	}
	var prev *event.Entry
	if had {
		var err error
		if prev, err = l.oldState(ctx, uuid); err != nil {
			return err
		}
	}
	ev, outcome := Change(uuid, prev, m.DN, attrs)
	if outcome != Publish {
		return l.clearPoison(ctx, uuid)
	}
	ev.CSN, ev.At = entry.CSN, time.Now().UTC()
	if p := l.poisonValues(uuid, m.DN, attrs); p != nil {
		return l.skipPoison(ctx, p, ev)
	}
	if p := l.poisonSize(&ev); p != nil {
		return l.skipPoison(ctx, p, ev)
	}
	if err := l.clearPoison(ctx, uuid); err != nil {
		return err
	}
	l.known[uuid] = now
	l.stage(uuid, &entry)
	l.pending = append(l.pending, pendingPub{ev: ev, entry: &entry})
	l.pendingBytes += attrsSize(ev.Old) + 2*attrsSize(attrs)
	return nil
}

func (l *Listener) queueDelete(ctx context.Context, uuid string) error {
	if err := l.clearPoison(ctx, uuid); err != nil {
		return err
	}
	if _, had := l.known[uuid]; !had {
		return nil
	}
	old, err := l.oldState(ctx, uuid)
	if err != nil {
		return err
	}
	delete(l.known, uuid)
	l.stage(uuid, nil)
	l.pendingBytes += attrsSize(old.Attrs)
	ev, _ := Change(uuid, old, "", nil)
	ev.At = time.Now().UTC()
	l.pending = append(l.pending, pendingPub{ev: ev})
	return nil
}

// endRefresh turns the known entries the refresh did not mention into
// deletes (full or present-mode refresh), applies the mass-delete guard,
// and queues what may be published.
func (l *Listener) endRefresh(ctx context.Context, rf *refresh) error {
	if rf.full || rf.present {
		for uuid := range l.known {
			if _, ok := rf.seen[uuid]; !ok {
				rf.deletes[uuid] = struct{}{}
			}
		}
		// A skipped entry that is gone was never published: nothing to
		// delete, only its record to drop.
		for uuid := range l.poison {
			if _, ok := rf.seen[uuid]; !ok {
				if _, known := l.known[uuid]; !known {
					if err := l.clearPoison(ctx, uuid); err != nil {
						return err
					}
				}
			}
		}
	}
	// The pending adds already sit in known; count the directory as it was.
	knownBefore := len(l.known)
	for _, p := range l.pending {
		if p.ev.Op == event.OpAdd {
			knownBefore--
		}
	}
	var dels []string
	for uuid := range rf.deletes {
		if _, ok := l.known[uuid]; ok {
			dels = append(dels, uuid)
		}
	}
	held, err := l.heldDeletes(ctx)
	if err != nil {
		return err
	}
	if held != nil {
		// Entries that came back are no longer held.
		var still []string
		for _, u := range held.UUIDs {
			if _, ok := rf.seen[u]; !ok {
				if _, known := l.known[u]; known {
					still = append(still, u)
				}
			}
		}
		held.UUIDs = still
	}
	if len(dels) > 0 && !l.cfg.ConfirmMassDelete &&
		float64(len(dels)) > l.cfg.MassDeleteShare*float64(knownBefore) && len(dels) > l.cfg.MassDeleteMin {
		l.log.Error().Int("deletes", len(dels)).Int("known", knownBefore).
			Float64("share", float64(len(dels))/float64(max(knownBefore, 1))).
			Msg("mass-delete guard: refresh would delete a large share of the directory; deletes held until confirmed (mailsync confirm-deletes)")
		if held == nil {
			held = &HeldDeletes{Known: knownBefore, At: time.Now().UTC()}
		}
		set := map[string]struct{}{}
		for _, u := range held.UUIDs {
			set[u] = struct{}{}
		}
		for _, u := range dels {
			if _, ok := set[u]; !ok {
				held.UUIDs = append(held.UUIDs, u)
			}
		}
		dels = nil
	}
	for _, u := range dels {
		if err := l.queueDelete(ctx, u); err != nil {
			return err
		}
	}
	if err := l.storeHeld(ctx, held); err != nil {
		return err
	}
	l.setStatus(func(s *Status) { s.Refreshing = false })
	l.log.Info().Int("entries", len(l.known)).Int("deletes", len(dels)).Msg("directory refresh done")
	return l.sync(ctx)
}
