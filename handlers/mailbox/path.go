package mailbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"mailsync/address"
	"mailsync/event"
	"mailsync/fault"
)

// ValidateAddress checks that addr can name a mailbox (package address:
// RFC 5321's lengths, nothing that could steer a path) and returns its
// lowercased local part and domain.
func ValidateAddress(addr string) (local, domain string, err error) {
	return address.Split(event.AttrPrimaryAddress, addr)
}

// Layout turns addresses into paths from a Dovecot mail_home-style
// template. Only %Ld, %Ln, %Lu, %d, %n, %u and %% are understood; addresses
// are lowercased before, so %d and %Ld are the same.
type Layout struct {
	Template string
	// Root is the template's fixed prefix, the directory every path must
	// stay under ("the spool root").
	Root string
}

// NewLayout checks a template: absolute, with %Ln or %n or %u, and a fixed
// leading directory to confine paths to.
func NewLayout(template string) (Layout, error) {
	if !filepath.IsAbs(template) {
		return Layout{}, fmt.Errorf("template %q: not absolute", template)
	}
	if !strings.Contains(template, "%Ln") && !strings.Contains(template, "%n") &&
		!strings.Contains(template, "%Lu") && !strings.Contains(template, "%u") {
		return Layout{}, fmt.Errorf("template %q: names no user (%%Ln)", template)
	}
	i := strings.IndexByte(template, '%')
	root := filepath.Clean(template[:strings.LastIndexByte(template[:i], '/')+1])
	if root == "/" {
		return Layout{}, fmt.Errorf("template %q: variables in the first path component leave nothing to confine paths to", template)
	}
	return Layout{Template: template, Root: root}, nil
}

// Path expands the template for a validated address.
func (l Layout) Path(local, domain string) (string, error) {
	var b strings.Builder
	t := l.Template
	for i := 0; i < len(t); i++ {
		if t[i] != '%' {
			b.WriteByte(t[i])
			continue
		}
		rest := t[i+1:]
		switch {
		case strings.HasPrefix(rest, "%"):
			b.WriteByte('%')
			i++
		case strings.HasPrefix(rest, "Ld"), strings.HasPrefix(rest, "Ln"), strings.HasPrefix(rest, "Lu"):
			b.WriteString(expand(rest[1], local, domain))
			i += 2
		case strings.HasPrefix(rest, "d"), strings.HasPrefix(rest, "n"), strings.HasPrefix(rest, "u"):
			b.WriteString(expand(rest[0], local, domain))
			i++
		default:
			return "", fmt.Errorf("template %q: unsupported variable at %q", t, t[i:])
		}
	}
	p := filepath.Clean(b.String())
	if !within(l.Root, p) || p == l.Root {
		return "", fmt.Errorf("path %s is outside the spool root %s", p, l.Root)
	}
	return p, nil
}

func expand(c byte, local, domain string) string {
	switch c {
	case 'd':
		return domain
	case 'n':
		return local
	}
	return local + "@" + domain
}

// within reports whether p is root or below it (both clean).
func within(root, p string) bool {
	return p == root || strings.HasPrefix(p, root+string(filepath.Separator))
}

// Confine checks that no existing component of p, from the root down,
// is a symlink resolving outside the root. It is called right before each
// operation; a path that does not exist yet passes as far as it exists.
func (l Layout) Confine(p string) error {
	realRoot, err := filepath.EvalSymlinks(l.Root)
	if err != nil {
		return fault.Retryable(fmt.Errorf("resolve spool root %s: %w", l.Root, err))
	}
	rel, err := filepath.Rel(l.Root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("path %s is outside the spool root %s", p, l.Root)
	}
	cur := l.Root
	for _, c := range strings.Split(rel, string(filepath.Separator)) {
		cur = filepath.Join(cur, c)
		st, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fault.Retryable(fmt.Errorf("inspect %s: %w", cur, err))
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			continue
		}
		target, err := filepath.EvalSymlinks(cur)
		if err != nil {
			return fmt.Errorf("%s is a symlink that does not resolve: %v", cur, err)
		}
		if !within(realRoot, target) {
			return fmt.Errorf("%s is a symlink leading out of the spool root %s (to %s)", cur, l.Root, target)
		}
	}
	return nil
}
