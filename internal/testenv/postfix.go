package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Postfix is what a test needs to build and query Postfix lookup tables
// without a running Postfix: the postmap binary and a config directory with
// an empty main.cf (postmap refuses to run without one).
type Postfix struct {
	Postmap   string
	ConfigDir string
}

// StartPostfix finds postmap and writes a config directory in a temp dir.
func StartPostfix(t testing.TB) *Postfix {
	t.Helper()
	p := &Postfix{
		Postmap:   Require(t, "postmap", "postfix"),
		ConfigDir: t.TempDir(),
	}
	if err := os.WriteFile(filepath.Join(p.ConfigDir, "main.cf"), []byte("compatibility_level = 3.6\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mapTypePackage names the Debian package that brings a postmap map type.
var mapTypePackage = map[string]string{
	"hash": "postfix", "lmdb": "postfix-lmdb", "cdb": "postfix-cdb", "ldap": "postfix-ldap",
}

// RequireMapType fails the test when postmap cannot use map type typ,
// naming the package that provides it.
func (p *Postfix) RequireMapType(t testing.TB, typ string) {
	t.Helper()
	postconf := Require(t, "postconf", "postfix")
	out, err := exec.Command(postconf, "-c", p.ConfigDir, "-m").Output()
	if err != nil {
		t.Fatalf("postconf -m: %v", err)
	}
	for _, l := range strings.Fields(string(out)) {
		if l == typ {
			return
		}
	}
	pkg := mapTypePackage[typ]
	if pkg == "" {
		pkg = "postfix-" + typ
	}
	t.Fatalf("postfix map type %s not available: install it with `apt-get install -y %s`", typ, pkg)
}

// Query looks keys up in table (e.g. "hash:/dir/virtual") with one
// `postmap -q -` and returns the keys found with their values. A key not
// found is absent from the result.
func (p *Postfix) Query(t testing.TB, table string, keys ...string) map[string]string {
	t.Helper()
	res, err := p.TryQuery(table, keys...)
	if err != nil {
		t.Fatalf("postmap -q - %s: %v", table, err)
	}
	return res
}

// TryQuery is Query returning the error instead of failing the test.
func (p *Postfix) TryQuery(table string, keys ...string) (map[string]string, error) {
	cmd := exec.Command(p.Postmap, "-c", p.ConfigDir, "-q", "-", table)
	cmd.Stdin = strings.NewReader(strings.Join(keys, "\n") + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	// postmap -q exits 1 when a key is not found; anything on stderr is a
	// real failure (a table that cannot be opened, an LDAP error).
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1 && stderr.Len() == 0) {
		return nil, &QueryError{Table: table, Err: err, Stderr: stderr.String()}
	}
	res := make(map[string]string, len(keys))
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "\t")
		if ok {
			res[k] = v
		}
	}
	return res, sc.Err()
}

// QueryError is a failed postmap lookup, with postmap's own words.
type QueryError struct {
	Table  string
	Err    error
	Stderr string
}

func (e *QueryError) Error() string { return e.Table + ": " + e.Err.Error() + ": " + e.Stderr }
