// Package address is the one rule for the mail addresses, mail domains and
// host names mailsync takes from the directory. Every handler asks it before
// an address becomes a mailbox path, a key or value of a Postfix map, or a
// transport route, so no map holds an address the mailbox handler refuses,
// and every handler refuses the same values for the same reason.
//
// The rules:
//   - An address is local@domain with exactly one "@". The local part is 1–64
//     octets, the domain at most 255 and the whole address at most 254 (RFC
//     5321 §4.5.3.1; 254 is a forward-path of 256 octets less its angle
//     brackets).
//   - Neither part may steer a path (mailbox homes are built from them under
//     Dovecot's mail_home template): no "/", NUL, "..", leading dot, control
//     character, white space or invalid UTF-8.
//   - Nothing that would change a Postfix table line: no ",", no quote or
//     backslash, no leading "#".
//   - A domain is a DNS name: labels of 1–63 octets, letters, digits, "-"
//     and "_" (and UTF-8 for internationalised names), no label starting or
//     ending with "-", no trailing dot. A mail domain entry's cn follows the
//     same rule.
//   - White space around a value is refused, never trimmed: Dovecot and
//     Postfix would use the value as stored (Dovecot makes a home under
//     "example.org " for "user@example.org "), so a trimmed address would
//     name a mailbox nobody reaches. The administrator fixes the entry; the
//     refusal names the entry's DN and the attribute.
//   - Addresses and domains are compared lowercased (UCS, reference §1.2);
//     the functions here return them lowercased.
//   - A host name (univentionMailHomeServer, the config's host and peers) is
//     compared as a DNS name: case-insensitive, one trailing dot ignored
//     ("mail.example.org." is "mail.example.org").
//
// UCS checks none of this (reference §1.2, §1.9 items 5 and 6).
package address

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// RFC 5321 §4.5.3.1 size limits, and RFC 1035's for host names.
const (
	MaxLocalPart = 64
	MaxDomain    = 255
	MaxAddress   = 254
	MaxLabel     = 63
	MaxHost      = 253
)

// Error is a refused value and the attribute it came from.
type Error struct {
	Attr   string // the LDAP attribute, e.g. mailPrimaryAddress
	Value  string // the value as stored
	Reason string
}

func (e *Error) Error() string {
	if e.Attr == "" {
		return fmt.Sprintf("%q: %s", e.Value, e.Reason)
	}
	return fmt.Sprintf("%s %q: %s", e.Attr, e.Value, e.Reason)
}

// Attributes lists the attributes of every *Error in err's tree, in order,
// each once: what a dead letter names.
func Attributes(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
			return
		case *Error:
			for _, a := range out {
				if a == e.Attr {
					return
				}
			}
			if e.Attr != "" {
				out = append(out, e.Attr)
			}
			return
		case interface{ Unwrap() []error }:
			for _, x := range e.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
	}
	walk(err)
	return out
}

func refuse(attr, value, format string, args ...any) *Error {
	return &Error{Attr: attr, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// Check validates the address value of attribute attr as stored and returns
// it lowercased. An empty value is refused too; callers skip absent
// attributes before.
func Check(attr, value string) (string, error) {
	if plainAddress(value) > 0 {
		return strings.ToLower(value), nil
	}
	_, _, err := Split(attr, value)
	if err != nil {
		return "", err
	}
	return strings.ToLower(value), nil
}

// Split is Check returning the lowercased local part and domain.
func Split(attr, value string) (local, domain string, err error) {
	if at := plainAddress(value); at > 0 {
		low := strings.ToLower(value)
		return low[:at], low[at+1:], nil
	}
	if err := surrounding(attr, value); err != nil {
		return "", "", err
	}
	if strings.Count(value, "@") != 1 {
		return "", "", refuse(attr, value, "want exactly one @")
	}
	low := strings.ToLower(value)
	local, domain, _ = strings.Cut(low, "@")
	switch {
	case local == "":
		return "", "", refuse(attr, value, "empty local part")
	case domain == "":
		return "", "", refuse(attr, value, "empty domain")
	case len(local) > MaxLocalPart:
		return "", "", refuse(attr, value, "local part is %d octets, RFC 5321 allows %d", len(local), MaxLocalPart)
	case len(domain) > MaxDomain:
		return "", "", refuse(attr, value, "domain is %d octets, RFC 5321 allows %d", len(domain), MaxDomain)
	case len(low) > MaxAddress:
		return "", "", refuse(attr, value, "%d octets, RFC 5321 allows %d", len(low), MaxAddress)
	}
	if r := pathSafe(local); r != "" {
		return "", "", refuse(attr, value, "local part %s", r)
	}
	switch {
	case strings.HasPrefix(local, "#"):
		return "", "", refuse(attr, value, `local part starts with "#"`)
	case strings.ContainsAny(local, `,"\`):
		return "", "", refuse(attr, value, `local part contains one of , " \`)
	}
	if r := dnsName(domain, MaxDomain); r != "" {
		return "", "", refuse(attr, value, "domain %s", r)
	}
	return local, domain, nil
}

// PublicFolder validates a shared folder's cn ("<name>@<maildomain>") as
// the name of a Dovecot public namespace and the path of its maildir
// (reference §2): an address by Split, and only a-z, 0-9 and . _ + - in
// either part, since Dovecot expands % and $ in a namespace's location and
// splits it at ':'. It returns the lowercased parts.
func PublicFolder(attr, value string) (local, domain string, err error) {
	if local, domain, err = Split(attr, value); err != nil {
		return "", "", err
	}
	for _, r := range local + domain {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("._+-@", r)) {
			return "", "", refuse(attr, value, "only a-z, 0-9 and . _ + - can name a public namespace (Dovecot expands or splits at %q)", r)
		}
	}
	return local, domain, nil
}

// Domain validates a mail domain (a mail domain entry's cn) as stored and
// returns it lowercased.
func Domain(attr, value string) (string, error) {
	if err := surrounding(attr, value); err != nil {
		return "", err
	}
	low := strings.ToLower(value)
	if r := dnsName(low, MaxDomain); r != "" {
		return "", refuse(attr, value, "%s", r)
	}
	return low, nil
}

// Host validates a host name (a home server, this host's FQDN) as stored
// and returns its canonical form: lowercased, one trailing dot dropped.
func Host(attr, value string) (string, error) {
	if err := surrounding(attr, value); err != nil {
		return "", err
	}
	h := CanonicalHost(value)
	if len(h) <= MaxHost && plainDomain(h) {
		return h, nil
	}
	if r := dnsName(h, MaxHost); r != "" {
		return "", refuse(attr, value, "is not a host name: %s", r)
	}
	for _, r := range h {
		if r >= utf8.RuneSelf {
			return "", refuse(attr, value, "is not a host name: not ASCII (write the A-label, xn--…)")
		}
	}
	return h, nil
}

// CanonicalHost is how host names compare: lowercased, one trailing dot
// dropped. It does not validate.
func CanonicalHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// SameHost reports whether a and b name the same host as DNS names.
func SameHost(a, b string) bool {
	return CanonicalHost(a) == CanonicalHost(b)
}

func surrounding(attr, value string) error {
	if value == "" {
		return refuse(attr, value, "empty")
	}
	if !utf8.ValidString(value) {
		// checked before lowercasing, which would replace the bad bytes
		return refuse(attr, value, "is not valid UTF-8")
	}
	first, _ := utf8.DecodeRuneInString(value)
	last, _ := utf8.DecodeLastRuneInString(value)
	if unicode.IsSpace(first) || unicode.IsSpace(last) {
		return refuse(attr, value, "white space around the value (refused, not trimmed: fix the entry)")
	}
	return nil
}

// pathSafe says why s cannot be one path component, or "".
func pathSafe(s string) string {
	switch {
	case strings.HasPrefix(s, "."):
		return "starts with a dot"
	case strings.Contains(s, ".."):
		return `contains ".."`
	case strings.ContainsRune(s, '/'):
		return `contains "/"`
	case strings.ContainsRune(s, 0):
		return "contains NUL"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Sprintf("contains control character %U", r)
		}
		if unicode.IsSpace(r) {
			return fmt.Sprintf("contains white space %U", r)
		}
	}
	return ""
}

// dnsName says why s (lowercased) is not a DNS name of at most max octets
// without a trailing dot, or "".
func dnsName(s string, max int) string {
	if r := pathSafe(s); r != "" {
		return r
	}
	switch {
	case s == "":
		return "empty"
	case len(s) > max:
		return fmt.Sprintf("is %d octets, at most %d allowed", len(s), max)
	case strings.HasSuffix(s, "."):
		return "ends with a dot"
	}
	for rest := s; ; {
		label, more, found := strings.Cut(rest, ".")
		if err := checkLabel(label); err != nil {
			return err.Error()
		}
		if !found {
			return ""
		}
		rest = more
	}
}

func checkLabel(l string) error {
	switch {
	case l == "":
		return errors.New("has an empty label")
	case len(l) > MaxLabel:
		return fmt.Errorf("label %q is %d octets, DNS allows %d", l, len(l), MaxLabel)
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("label %q starts or ends with a hyphen", l)
	}
	for _, r := range l {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
		case r >= utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r)):
		default:
			return fmt.Errorf("label %q contains %q", l, r)
		}
	}
	return nil
}

// Join combines refusals into one error, its message the refusals' joined
// by "; " on one line (errors.Join would put them on lines of their own, a
// log line and a dead letter read better in one); nil when errs holds
// none.
func Join(errs ...error) error {
	var kept []error
	for _, e := range errs {
		if e != nil {
			kept = append(kept, e)
		}
	}
	switch len(kept) {
	case 0:
		return nil
	case 1:
		return kept[0]
	}
	return joined(kept)
}

type joined []error

func (j joined) Error() string {
	s := make([]string, len(j))
	for i, e := range j {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (j joined) Unwrap() []error { return j }

// PathComponent checks that s can be one component of a path under the
// spool: no "/", NUL, "..", leading dot, control character, white space or
// invalid UTF-8 (the rule an address's parts follow).
func PathComponent(s string) error {
	if r := pathSafe(s); r != "" {
		return errors.New(r)
	}
	return nil
}

// plainAddress is the fast path of Split for the common address: ASCII
// letters, digits, "_", "-", "+" and dots in the local part, a plainDomain
// after the one "@", within the lengths. It returns the index of the "@",
// or -1 when the value needs the full check (which may still accept it).
// It accepts nothing the full check refuses.
func plainAddress(v string) int {
	if len(v) > MaxAddress {
		return -1
	}
	at := strings.IndexByte(v, '@')
	if at <= 0 || at > MaxLocalPart || !plainDomain(v[at+1:]) {
		return -1
	}
	prev := byte('.') // a leading dot fails like ".."
	for i := 0; i < at; i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '+':
		case c == '.' && prev != '.':
		default:
			return -1
		}
		prev = c
	}
	return at
}

// plainDomain reports whether d is a DNS name of ASCII letters, digits,
// "-" and "_", labels of 1–63 octets not starting or ending with "-", at
// most 255 octets, no trailing dot: the fast path of dnsName.
func plainDomain(d string) bool {
	if d == "" || len(d) > MaxDomain {
		return false
	}
	start := 0
	for i := 0; i <= len(d); i++ {
		if i == len(d) || d[i] == '.' {
			n := i - start
			if n == 0 || n > MaxLabel || d[start] == '-' || d[i-1] == '-' {
				return false
			}
			start = i + 1
			continue
		}
		switch c := d[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
