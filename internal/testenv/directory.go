package testenv

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// DirectoryShape describes a generated directory for benchmarks.
type DirectoryShape struct {
	Users   int
	Groups  int
	Members int // uniqueMember values per group
	// Nested: every Nested-th group also holds the previous group.
	Nested int
}

// GenerateLDIF writes a directory of the given shape under base as LDIF for
// Preload and returns its path. Users are uid=uN,ou=people with address
// uN@example.org; groups cn=gN,ou=groups with address gN@example.org.
func GenerateLDIF(t testing.TB, base string, shape DirectoryShape) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "directory.ldif")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := 0; i < shape.Users; i++ {
		fmt.Fprintf(w, "dn: uid=u%d,ou=people,%s\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nobjectClass: univentionMail\n"+
			"uid: u%d\ncn: u%d\nsn: u%d\nuidNumber: %d\ngidNumber: 5000\nhomeDirectory: /home/u%d\nmailPrimaryAddress: u%d@example.org\n",
			i, base, i, i, i, 10000+i, i, i)
		if i%10 == 0 {
			fmt.Fprintf(w, "mailAlternativeAddress: alias%d@example.org\n", i)
		}
		w.WriteString("\n")
	}
	for g := 0; g < shape.Groups; g++ {
		fmt.Fprintf(w, "dn: cn=g%d,ou=groups,%s\nobjectClass: posixGroup\nobjectClass: univentionGroup\ncn: g%d\ngidNumber: %d\nmailPrimaryAddress: g%d@example.org\n",
			g, base, g, 100000+g, g)
		for m := 0; m < shape.Members && shape.Users > 0; m++ {
			fmt.Fprintf(w, "uniqueMember: uid=u%d,ou=people,%s\n", (g*shape.Members+m)%shape.Users, base)
		}
		if shape.Nested > 0 && g > 0 && g%shape.Nested == 0 {
			fmt.Fprintf(w, "uniqueMember: cn=g%d,ou=groups,%s\n", g-1, base)
		}
		w.WriteString("\n")
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}
