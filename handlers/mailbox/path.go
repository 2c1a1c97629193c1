package mailbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"mailsync/fault"
)

// RFC 5321 §4.5.3.1 size limits.
const (
	maxLocalPart = 64
	maxDomain    = 255
	maxAddress   = 254 // a forward-path of 256 octets less the angle brackets
)

// ValidateAddress checks that addr (already lowercased) can name a mailbox:
// exactly one "@", non-empty local part and domain within RFC 5321's
// limits, and nothing that could steer a path (a "/", NUL, control
// characters, white space, a leading dot or a ".."). UCS does no such check
// (reference §1.2, §1.9 items 5 and 6).
func ValidateAddress(addr string) (local, domain string, err error) {
	if strings.Count(addr, "@") != 1 {
		return "", "", fmt.Errorf("address %q: want exactly one @", addr)
	}
	local, domain, _ = strings.Cut(addr, "@")
	switch {
	case local == "":
		return "", "", fmt.Errorf("address %q: empty local part", addr)
	case domain == "":
		return "", "", fmt.Errorf("address %q: empty domain", addr)
	case len(local) > maxLocalPart:
		return "", "", fmt.Errorf("address %q: local part is %d octets, RFC 5321 allows %d", addr, len(local), maxLocalPart)
	case len(domain) > maxDomain:
		return "", "", fmt.Errorf("address %q: domain is %d octets, RFC 5321 allows %d", addr, len(domain), maxDomain)
	case len(addr) > maxAddress:
		return "", "", fmt.Errorf("address %q: %d octets, RFC 5321 allows %d", addr, len(addr), maxAddress)
	}
	for _, part := range []struct{ name, v string }{{"local part", local}, {"domain", domain}} {
		if err := pathSafe(part.v); err != nil {
			return "", "", fmt.Errorf("address %q: %s %w", addr, part.name, err)
		}
	}
	return local, domain, nil
}

// pathSafe rejects what could make a path component leave its directory or
// confuse a reader of the path.
func pathSafe(s string) error {
	switch {
	case strings.HasPrefix(s, "."):
		return errors.New("starts with a dot")
	case strings.Contains(s, ".."):
		return errors.New(`contains ".."`)
	case strings.ContainsRune(s, '/'):
		return errors.New(`contains "/"`)
	case strings.ContainsRune(s, 0):
		return errors.New("contains NUL")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("contains control character %U", r)
		}
		if unicode.IsSpace(r) {
			return fmt.Errorf("contains white space %U", r)
		}
		if r == unicode.ReplacementChar {
			return errors.New("is not valid UTF-8")
		}
	}
	return nil
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
