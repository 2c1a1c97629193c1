package mailconf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
)

// Diff is what Install would change, as a unified-style diff per file
// (installed → rendered, three lines of context); empty when nothing would.
// Secrets are not shown: a file of mode 0600 or stricter is reported as
// changed without its lines.
func Diff(p *Product) (string, error) {
	var b strings.Builder
	for _, f := range p.Files {
		have, err := os.ReadFile(f.Path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("read %s: %w", f.Path, err)
		}
		absent := errors.Is(err, fs.ErrNotExist)
		if f.Seed && !absent {
			continue
		}
		if !absent && bytes.Equal(have, f.Data) {
			if st, err := os.Stat(f.Path); err == nil && st.Mode().Perm() != f.Mode.Perm() {
				fmt.Fprintf(&b, "mode %s: %04o -> %04o\n", f.Path, st.Mode().Perm(), f.Mode.Perm())
			}
			continue
		}
		from := f.Path
		if absent {
			from = "/dev/null"
		}
		fmt.Fprintf(&b, "--- %s\n+++ %s\n", from, f.Path)
		if f.Mode.Perm()&0o077 == 0 {
			fmt.Fprintf(&b, "@@ (mode %04o: contents not shown) @@\n", f.Mode.Perm())
			continue
		}
		writeHunks(&b, diffLines(splitLines(string(have)), splitLines(string(f.Data))), 3)
	}
	return b.String(), nil
}

type diffLine struct {
	op   byte // ' ', '-', '+'
	text string
	a, b int // line numbers (1-based) in old and new
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// diffLines is a longest-common-subsequence line diff: config files are a
// few hundred lines, so the quadratic table is small.
func diffLines(a, b []string) []diffLine {
	n, m := len(a), len(b)
	lcs := make([][]int32, n+1)
	for i := range lcs {
		lcs[i] = make([]int32, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []diffLine
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			out = append(out, diffLine{' ', a[i], i + 1, j + 1})
			i, j = i+1, j+1
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, diffLine{'-', a[i], i + 1, j})
			i++
		default:
			out = append(out, diffLine{'+', b[j], i, j + 1})
			j++
		}
	}
	return out
}

// writeHunks prints the changed lines with ctx lines of context around them.
func writeHunks(b *strings.Builder, lines []diffLine, ctx int) {
	for i := 0; i < len(lines); {
		if lines[i].op == ' ' {
			i++
			continue
		}
		start := max(0, i-ctx)
		end := i
		for k := i; k < len(lines); k++ {
			if lines[k].op != ' ' {
				end = k
			} else if k-end > 2*ctx {
				break
			}
		}
		end = min(len(lines), end+ctx+1)
		fmt.Fprintf(b, "@@ -%d +%d @@\n", lines[start].a, lines[start].b)
		for _, l := range lines[start:end] {
			fmt.Fprintf(b, "%c%s\n", l.op, l.text)
		}
		i = end
	}
}

func (p *Product) postmap(ctx context.Context, typ, source string) error {
	bin := p.Postmap
	if bin == "" {
		bin = "postmap"
	}
	args := []string{typ + ":" + source}
	if p.PostmapConfigDir != "" {
		args = append([]string{"-c", p.PostmapConfigDir}, args...)
	}
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("postmap %s: %w: %s", source, err, strings.TrimSpace(string(out)))
	}
	return nil
}
