package aliases

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"mailsync/atomicfile"
	"mailsync/event"
	"mailsync/fault"
	"mailsync/postmap"
)

// loadLocked builds the model of a whole directory and installs its three
// tables whole, the mailbox and domain tables postmap'ed while the group
// expansions are computed, and the alias table's database built from its
// lines as they are (postmap.Stream). The caller holds h.mu with no write
// in flight, so no other write can come between; w is the handler's
// writer.
func (h *Handler) loadLocked(ctx context.Context, w *postmap.Writer, entries []event.Entry) error {
	w.IncrementalMin = h.incrementalMin
	var dom, mbx *postmap.Prepared
	var domErr, mbxErr error
	var wg sync.WaitGroup
	// The alias table's database is built as its lines are computed.
	as, err := w.Stream(ctx, AliasMap)
	var put func([]byte)
	if err == nil {
		put = as.Put
	}
	// What only later changes use, the model's indexes and the per-key
	// lines of the tables, is made by the first change (model.complete,
	// rendered.index), as postmap.Writer indexes a source it updates.
	h.m = buildModelEarly(h.cfg.HostFQDN, h.cfg.ExpansionLimit, entries, func(mailbox, domains []byte) {
		wg.Go(func() { dom, domErr = w.Prepare(ctx, postmap.Table{Name: DomainMap, Src: domains}) })
		wg.Go(func() { mbx, mbxErr = w.Prepare(ctx, postmap.Table{Name: MailboxMap, Src: mailbox}) })
	}, put)
	var alias *postmap.Prepared
	if err == nil {
		alias, err = as.Finish(h.m.aliasT.source())
	}
	wg.Wait()
	if err = errors.Join(domErr, mbxErr, err); err == nil {
		// Domains and mailboxes first, as in collect.
		err = w.Commit(dom, mbx, alias)
	} else {
		postmap.Discard(dom, mbx, alias)
	}
	if err == nil {
		h.writes.Add(3)
		if h.cfg.WriteMainCFLocal {
			err = writeMainCFLocal(h.cfg.MainCFLocal, h.m.maxOverLimit())
		}
	}
	// Nothing to render or take: the tables were filled whole.
	if err != nil {
		h.force = true // the next write must not trust what is on disk
		clear(h.synced)
		return fault.Retryable(err)
	}
	h.force = false
	for _, name := range []string{DomainMap, MailboxMap, AliasMap} {
		h.synced[name] = true
	}
	return nil
}

// Markers of the block mailsync owns in main.cf.local; the rest of the
// file is the admin's and kept as it is.
const (
	mainCFBegin = "# BEGIN mailsync aliases: groups over virtual_alias_expansion_limit"
	mainCFEnd   = "# END mailsync aliases"
)

// writeMainCFLocal puts the expansion-limit line for n recipients into
// mailsync's block of path, or removes the block when n is 0; atomically.
func writeMainCFLocal(path string, n int) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var kept []string
	in := false
	for _, l := range strings.SplitAfter(string(old), "\n") {
		switch {
		case strings.TrimRight(l, "\n") == mainCFBegin:
			in = true
		case strings.TrimRight(l, "\n") == mainCFEnd && in:
			in = false
		case !in && l != "":
			kept = append(kept, l)
		}
	}
	out := strings.Join(kept, "")
	if n > 0 {
		if out != "" && !strings.HasSuffix(out, "\n") {
			out += "\n"
		}
		out += mainCFBegin + "\n" + MainCFLine(n) + "\n" + mainCFEnd + "\n"
	}
	if out == string(old) {
		return nil
	}
	if err := atomicfile.Write(path, []byte(out), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
