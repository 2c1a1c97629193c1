package mailbox

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
)

// homeIndex knows which homes of the spool each entry owns, by their owner
// markers: read from the spool when the handler starts, and updated for
// every path a step touches.
type homeIndex struct {
	mu sync.Mutex
	// byUUID: uuid -> the homes it owns, almost always one (a slice, not
	// a map each: at 100k users the index is a large share of the
	// handler's memory).
	byUUID map[string][]Home
	byPath map[string]string // path -> uuid
}

func newHomeIndex() *homeIndex {
	return &homeIndex{byUUID: map[string][]Home{}, byPath: map[string]string{}}
}

// scan indexes every marked home of the layout.
func (x *homeIndex) scan(l Layout) error {
	paths, err := ListHomes(l)
	if err != nil {
		return err
	}
	for _, p := range paths {
		x.update(p)
	}
	return nil
}

// update reads the marker at home again.
func (x *homeIndex) update(home string) {
	m, ok := readMarker(home)
	x.set(home, m, ok)
}

// set records m as the marker at home (ok false: none), for a caller that
// has just written it.
func (x *homeIndex) set(home string, m marker, ok bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if u, had := x.byPath[home]; had {
		homes := slices.DeleteFunc(x.byUUID[u], func(h Home) bool { return h.Path == home })
		if len(homes) == 0 {
			delete(x.byUUID, u)
		} else {
			x.byUUID[u] = homes
		}
		delete(x.byPath, home)
	}
	if !ok {
		return
	}
	x.byUUID[m.UUID] = append(x.byUUID[m.UUID], Home{Path: home, Address: m.Address, Owner: Owner(m)})
	x.byPath[home] = m.UUID
}

// of lists the homes uuid owns, sorted by path.
func (x *homeIndex) of(uuid string) []Home {
	x.mu.Lock()
	defer x.mu.Unlock()
	homes := x.byUUID[uuid]
	out := append(make([]Home, 0, len(homes)), homes...)
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// ListHomes lists the directories on disk the mail_home template can name,
// skipping mailsync's own (trash, attic, staging copies) and any other dot
// directory, which no valid address produces.
func ListHomes(l Layout) ([]string, error) {
	matches, err := filepath.Glob(homeGlob(l.Template))
	if err != nil {
		return nil, fmt.Errorf("list homes under %s: %w", l.Root, err)
	}
	var out []string
	for _, p := range matches {
		rel, err := filepath.Rel(l.Root, p)
		if err != nil || hasDotComponent(rel) {
			continue
		}
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}

// homeGlob turns a mail_home template into a glob: each variable becomes
// "*", the fixed text is escaped.
func homeGlob(template string) string {
	var b strings.Builder
	for i := 0; i < len(template); i++ {
		c := template[i]
		if c != '%' {
			if strings.IndexByte(`*?[\`, c) >= 0 {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
			continue
		}
		rest := template[i+1:]
		switch {
		case strings.HasPrefix(rest, "%"):
			b.WriteByte('%')
			i++
		case strings.HasPrefix(rest, "L") && len(rest) > 1:
			b.WriteByte('*')
			i += 2
		default:
			b.WriteByte('*')
			i++
		}
	}
	return b.String()
}

func hasDotComponent(rel string) bool {
	for _, c := range strings.Split(rel, string(filepath.Separator)) {
		if strings.HasPrefix(c, ".") {
			return true
		}
	}
	return false
}
