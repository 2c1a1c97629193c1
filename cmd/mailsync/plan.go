package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/go-ldap/ldap/v3"

	"mailsync/event"
	"mailsync/handlers/registry"
	"mailsync/identity"
	"mailsync/listener"
	"mailsync/stream"
)

type planCmd struct {
	File string `short:"f" required:"" help:"LDIF file of changes (changetype add, modify, delete, modrdn); - reads stdin." placeholder:"change.ldif"`
}

// Run shows what the handlers of this host would do with the changes of an
// LDIF file, doing nothing: each change becomes the event the listener would
// publish (its rule, listener.Change, with old from the entries bucket,
// looked up by DN), and each handler says what it would do with it
// (registry.Handler.Plan: the mailbox handler's own plan with its paths,
// the map handlers' keys that change). Changes apply in order, each on top
// of the ones before.
func (c planCmd) Run(e *env) error {
	cfg, err := loadConfig(e.cfg)
	if err != nil {
		return err
	}
	var r io.Reader = os.Stdin
	if c.File != "-" {
		f, err := os.Open(c.File)
		if err != nil {
			return usageError{fmt.Errorf("plan -f: %w", err)}
		}
		defer f.Close()
		r = f
	}
	changes, err := parseLDIF(r)
	if err != nil {
		return usageError{fmt.Errorf("plan -f %s: %w", c.File, err)}
	}
	return withBus(e, func(bus *stream.Bus) error {
		known, err := stream.LoadEntries(e.ctx, bus.Entries)
		if err != nil {
			return err
		}
		d := newPlanDir(known)
		type planner struct {
			name string
			plan registry.Planner
		}
		var planners []planner
		for _, h := range registry.Enabled(cfg) {
			p, err := h.Plan(cfg, d.entries)
			if err != nil {
				return err
			}
			planners = append(planners, planner{h.Name, p})
		}
		for i, ch := range changes {
			fmt.Fprintf(e.stdout, "change %d (line %d): %s %s\n", i+1, ch.line, ch.Type, ch.DN)
			ev, note := d.event(ch, i+1)
			if note != "" {
				fmt.Fprintf(e.stdout, "  %s\n", note)
			}
			if ev == nil {
				continue
			}
			fmt.Fprintf(e.stdout, "  event: %s\n", describeEvent(*ev))
			d.apply(*ev)
			for _, p := range planners {
				summary, lines := p.plan(*ev, d.entries)
				if len(lines) == 0 {
					fmt.Fprintf(e.stdout, "  %s: %s\n", p.name, summary)
					continue
				}
				fmt.Fprintf(e.stdout, "  %s:\n", p.name)
				for _, l := range lines {
					fmt.Fprintf(e.stdout, "    %s\n", l)
				}
			}
		}
		fmt.Fprintln(e.stdout, "nothing was changed (plan only)")
		return nil
	})
}

// planDir is the directory as the listener last published it, changed in
// memory by the planned changes.
type planDir struct {
	entries map[string]event.Entry // by UUID
	byDN    map[string]string      // normalised DN -> UUID
}

func newPlanDir(known map[string]event.Entry) *planDir {
	d := &planDir{entries: known, byDN: make(map[string]string, len(known))}
	for u, e := range known {
		d.byDN[identity.NormDN(e.DN)] = u
	}
	return d
}

func (d *planDir) apply(ev event.Event) {
	if old, ok := d.entries[ev.UUID]; ok {
		delete(d.byDN, identity.NormDN(old.DN))
	}
	if ev.Op == event.OpDelete {
		delete(d.entries, ev.UUID)
		return
	}
	d.entries[ev.UUID] = event.Entry{UUID: ev.UUID, DN: ev.DN, Kind: ev.Kind, Attrs: ev.New, CSN: ev.CSN}
	d.byDN[identity.NormDN(ev.DN)] = ev.UUID
}

// event is the event the listener would publish for ch (its own rule,
// listener.Change, on the entry as the change leaves it), or nil with a
// note saying why there is none.
func (d *planDir) event(ch ldifChange, n int) (*event.Event, string) {
	uuid, had := d.byDN[identity.NormDN(ch.DN)]
	var prev *event.Entry
	if had {
		e := d.entries[uuid]
		prev = &e
	}
	dn := ch.DN
	var note string
	var attrs event.Attrs
	switch ch.Type {
	case "add":
		if had {
			return nil, "the entry exists already: the directory would refuse the add; no event"
		}
		attrs = event.NewAttrs(ch.Attrs)
	case "delete":
		if !had {
			return nil, "not an entry mailsync follows (not in the entries bucket); no event"
		}
		dn = ""
	case "modify":
		attrs = event.Attrs{}
		if !had {
			note = "not in the entries bucket: planned from the LDIF's values alone"
		} else {
			dn, attrs = prev.DN, cloneAttrs(prev.Attrs) // the directory's spelling, not the LDIF's
		}
		for _, m := range ch.Mods {
			name, ok := event.CanonicalAttr(m.Attr)
			if !ok {
				continue // not followed: no event for it
			}
			applyMod(attrs, name, m)
		}
	case "modrdn":
		if !had {
			return nil, "not an entry mailsync follows (not in the entries bucket); no event"
		}
		dn, attrs = modRDN(prev.DN, prev.Attrs, ch)
	}
	ev, outcome := listener.Change(uuid, prev, dn, attrs)
	switch {
	case outcome == listener.NotFollowed:
		return nil, join(note, "not an entry mailsync follows (filter "+event.Filter+"); no event")
	case outcome == listener.Unchanged:
		return nil, join(note, "nothing mailsync follows changes; no event")
	case ev.Op == event.OpAdd:
		ev.UUID = fmt.Sprintf("planned-%d", n)
	case ev.Op == event.OpDelete && attrs != nil:
		note = join(note, "the entry leaves mailsync's filter")
	}
	return &ev, note
}

// modRDN is the DN and the followed attributes of an entry at oldDN after
// the modrdn ch: the new RDN's values added, the old RDN's removed with
// deleteoldrdn.
func modRDN(oldDN string, old event.Attrs, ch ldifChange) (string, event.Attrs) {
	attrs := cloneAttrs(old)
	parent := ch.NewSuperior
	if parent == "" {
		if dn, err := ldap.ParseDN(oldDN); err == nil && len(dn.RDNs) > 1 {
			parent = oldDN[strings.Index(oldDN, ",")+1:]
		}
	}
	dn := ch.NewRDN
	if parent != "" {
		dn += "," + parent
	}
	rdnMods := func(of, op string) {
		if p, err := ldap.ParseDN(of); err == nil && len(p.RDNs) > 0 {
			for _, a := range p.RDNs[0].Attributes {
				if name, ok := event.CanonicalAttr(a.Type); ok {
					applyMod(attrs, name, ldifMod{Op: op, Values: []string{a.Value}})
				}
			}
		}
	}
	if ch.DeleteOld {
		rdnMods(oldDN, "delete")
	}
	rdnMods(dn, "add")
	return dn, attrs
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func cloneAttrs(a event.Attrs) event.Attrs {
	out := make(event.Attrs, len(a))
	for k, v := range a {
		out[k] = slices.Clone(v)
	}
	return out
}

// applyMod applies one LDAP modification to followed attribute name.
// Values compare case-insensitively, as the mail attributes' matching
// rules do.
func applyMod(a event.Attrs, name string, m ldifMod) {
	has := func(vals []string, v string) bool {
		return slices.ContainsFunc(vals, func(x string) bool { return strings.EqualFold(x, v) })
	}
	switch m.Op {
	case "replace":
		if len(m.Values) == 0 {
			delete(a, name)
		} else {
			a[name] = slices.Clone(m.Values)
		}
	case "add":
		for _, v := range m.Values {
			if !has(a[name], v) {
				a[name] = append(a[name], v)
			}
		}
	case "delete":
		if len(m.Values) == 0 {
			delete(a, name)
			return
		}
		kept := a[name][:0:0]
		for _, v := range a[name] {
			if !has(m.Values, v) {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			delete(a, name)
		} else {
			a[name] = kept
		}
	}
}

// describeEvent says what an event carries: op, kind, DN and the followed
// attributes that change.
func describeEvent(ev event.Event) string {
	s := fmt.Sprintf("%s %s %s", ev.Op, ev.Kind, ev.DN)
	if ev.OldDN != "" {
		s += " (was " + ev.OldDN + ")"
	}
	var changed []string
	for _, name := range event.Followed {
		o, n := ev.Old[name], ev.New[name]
		if slices.Equal(o, n) {
			continue
		}
		switch {
		case len(o) == 0:
			changed = append(changed, fmt.Sprintf("%s +%v", name, n))
		case len(n) == 0:
			changed = append(changed, fmt.Sprintf("%s -%v", name, o))
		default:
			changed = append(changed, fmt.Sprintf("%s %v -> %v", name, o, n))
		}
	}
	if len(changed) > 0 && ev.Op == event.OpModify {
		s += "; " + strings.Join(changed, "; ")
	}
	return s
}
