package mailbox

// Where an address's home (and index) is, checked before each use, and
// who owns it: the owner marker every home the handler makes carries.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"

	"mailsync/atomicfile"
	"mailsync/event"
	"mailsync/fault"
)

// paths validates addr and returns its home and (with a separate index)
// index dir. Errors are permanent and name the entry. A public folder's
// key gives its home under the public home and no index dir (its
// namespace keeps the indexes in the maildir).
func (h *Handler) paths(ev event.Event, addr string) (home, index string, err error) {
	if n := publicName(addr); n != "" {
		if home, err = publicPath(h.pub, n); err != nil {
			return "", "", fault.Permanentf("public folder of %s: %w", where(ev), err)
		}
		return home, "", nil
	}
	local, domain, err := ValidateAddress(addr)
	if err != nil {
		return "", "", fault.Permanentf("mailbox of %s: %w", where(ev), err)
	}
	if home, err = h.home.Path(local, domain); err != nil {
		return "", "", fault.Permanentf("mailbox of %s, address %q: %w", where(ev), addr, err)
	}
	if h.cfg.SeparateIndex {
		if index, err = h.index.Path(local, domain); err != nil {
			return "", "", fault.Permanentf("mailbox index of %s, address %q: %w", where(ev), addr, err)
		}
	}
	return home, index, nil
}

// layoutOf is the layout whose root holds p: the spool, the index root or
// the public home.
func (h *Handler) layoutOf(p string) Layout {
	for _, l := range []Layout{h.index, h.pub} {
		if l.Root != "" && within(l.Root, p) {
			return l
		}
	}
	return h.home
}

// locate is paths, confined: the home and index dir of addr, each checked
// to stay inside its root (no symlink leading out) right before the caller
// uses them.
func (h *Handler) locate(ev event.Event, addr string) (home, index string, err error) {
	if home, index, err = h.paths(ev, addr); err != nil {
		return "", "", err
	}
	if err := h.confine(ev, home, index); err != nil {
		return "", "", err
	}
	return home, index, nil
}

// confine checks the paths right before they are used.
func (h *Handler) confine(ev event.Event, home, index string) error {
	if err := h.layoutOf(home).Confine(home); err != nil {
		if fault.IsRetryable(err) {
			return err
		}
		return fault.Permanentf("mailbox of %s: %w", where(ev), err)
	}
	if index != "" {
		if err := h.index.Confine(index); err != nil {
			if fault.IsRetryable(err) {
				return err
			}
			return fault.Permanentf("mailbox index of %s: %w", where(ev), err)
		}
	}
	return nil
}

// owner is the uid:gid for directories the handler makes.
func (h *Handler) owner() (int, int) {
	uid, gid := h.cfg.UID, h.cfg.GID
	if uid >= 0 && gid >= 0 {
		return uid, gid
	}
	if st, err := os.Stat(h.home.Root); err == nil {
		s := st.Sys().(*syscall.Stat_t)
		if uid < 0 {
			uid = int(s.Uid)
		}
		if gid < 0 {
			gid = int(s.Gid)
		}
	}
	return uid, gid
}

// marker is the content of MarkerFile.
type marker struct {
	UUID    string `json:"uuid"`
	DN      string `json:"dn"`
	Address string `json:"address"`
}

func readMarker(home string) (marker, bool) {
	var m marker
	data, err := os.ReadFile(filepath.Join(home, MarkerFile))
	if err != nil || json.Unmarshal(data, &m) != nil || m.UUID == "" {
		return marker{}, false
	}
	return m, true
}

// writeMarker makes m the marker of home, unless it is already.
func writeMarker(home string, m marker) error {
	old, ok := readMarker(home)
	return writeMarkerOver(home, old, ok, m)
}

// writeMarkerOver is writeMarker for a caller that has just read the
// marker there (old; ok false: none), under the entry's lock: no second
// read.
func writeMarkerOver(home string, old marker, ok bool, m marker) error {
	if ok && old == m {
		return nil
	}
	data, _ := json.Marshal(m)
	return atomicfile.Write(filepath.Join(home, MarkerFile), data, 0o600)
}
