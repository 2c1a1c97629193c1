package main

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
)

// ldifChange is one change record of an LDIF file (RFC 2849). A record
// without changetype is an add.
type ldifChange struct {
	line        int // where the record starts, for errors
	DN          string
	Type        string              // add, modify, delete, modrdn
	Attrs       map[string][]string // add
	Mods        []ldifMod           // modify
	NewRDN      string              // modrdn
	DeleteOld   bool
	NewSuperior string
}

type ldifMod struct {
	Op     string // add, delete, replace
	Attr   string
	Values []string
}

type ldifLine struct {
	n         int
	name, val string
}

// parseLDIF reads change records. Only what mailsync plan needs is
// understood: folded lines, comments, base64 values ("::"); URL values
// (":<") are refused.
func parseLDIF(r io.Reader) ([]ldifChange, error) {
	var (
		out    []ldifChange
		record []ldifLine
		n      int
	)
	flush := func() error {
		if len(record) == 0 {
			return nil
		}
		c, err := parseRecord(record)
		record = nil
		if err != nil {
			return err
		}
		if c != nil {
			out = append(out, *c)
		}
		return nil
	}
	var raw []ldifRaw
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 16<<20)
	for sc.Scan() {
		n++
		l := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasPrefix(l, " "):
			if len(raw) == 0 || raw[len(raw)-1].blank {
				return nil, fmt.Errorf("ldif line %d: continuation without a line to continue", n)
			}
			raw[len(raw)-1].text += l[1:]
		case strings.HasPrefix(l, "#"):
			raw = append(raw, ldifRaw{n: n, comment: true})
		case strings.TrimSpace(l) == "":
			raw = append(raw, ldifRaw{n: n, blank: true})
		default:
			raw = append(raw, ldifRaw{n: n, text: l})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read ldif: %w", err)
	}
	for _, rl := range raw {
		if rl.comment {
			continue
		}
		if rl.blank {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		if rl.text == "-" {
			record = append(record, ldifLine{n: rl.n, name: "-"})
			continue
		}
		name, val, err := splitLDIFLine(rl.text)
		if err != nil {
			return nil, fmt.Errorf("ldif line %d: %w", rl.n, err)
		}
		record = append(record, ldifLine{n: rl.n, name: name, val: val})
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

type ldifRaw struct {
	n              int
	text           string
	blank, comment bool
}

func splitLDIFLine(l string) (name, val string, err error) {
	i := strings.IndexByte(l, ':')
	if i <= 0 {
		return "", "", fmt.Errorf("want \"attribute: value\", got %q", l)
	}
	name, rest := l[:i], l[i+1:]
	switch {
	case strings.HasPrefix(rest, ":"):
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rest[1:]))
		if err != nil {
			return "", "", fmt.Errorf("%s: base64 value: %w", name, err)
		}
		return name, string(b), nil
	case strings.HasPrefix(rest, "<"):
		return "", "", fmt.Errorf("%s: URL values are not supported", name)
	}
	return name, strings.TrimLeft(rest, " "), nil
}

func parseRecord(rec []ldifLine) (*ldifChange, error) {
	if strings.EqualFold(rec[0].name, "version") {
		rec = rec[1:]
		if len(rec) == 0 {
			return nil, nil
		}
	}
	if !strings.EqualFold(rec[0].name, "dn") {
		return nil, fmt.Errorf("ldif line %d: a record starts with dn:, got %s", rec[0].n, rec[0].name)
	}
	c := &ldifChange{line: rec[0].n, DN: rec[0].val, Type: "add"}
	rest := rec[1:]
	for len(rest) > 0 && strings.EqualFold(rest[0].name, "control") {
		rest = rest[1:]
	}
	if len(rest) > 0 && strings.EqualFold(rest[0].name, "changetype") {
		c.Type = strings.ToLower(strings.TrimSpace(rest[0].val))
		rest = rest[1:]
	}
	bad := func(l ldifLine, f string, a ...any) error {
		return fmt.Errorf("ldif line %d (%s): %s", l.n, c.DN, fmt.Sprintf(f, a...))
	}
	switch c.Type {
	case "add":
		c.Attrs = map[string][]string{}
		for _, l := range rest {
			if l.name == "-" {
				return nil, bad(l, `"-" in an add record`)
			}
			c.Attrs[l.name] = append(c.Attrs[l.name], l.val)
		}
	case "delete":
		if len(rest) > 0 {
			return nil, bad(rest[0], "a delete record has no attributes")
		}
	case "modrdn", "moddn":
		c.Type = "modrdn"
		for _, l := range rest {
			switch strings.ToLower(l.name) {
			case "newrdn":
				c.NewRDN = l.val
			case "deleteoldrdn":
				c.DeleteOld = strings.TrimSpace(l.val) == "1"
			case "newsuperior":
				c.NewSuperior = l.val
			default:
				return nil, bad(l, "unexpected %s in a modrdn record", l.name)
			}
		}
		if c.NewRDN == "" {
			return nil, fmt.Errorf("ldif line %d (%s): modrdn without newrdn", c.line, c.DN)
		}
	case "modify":
		var m *ldifMod
		for _, l := range rest {
			switch {
			case l.name == "-":
				if m == nil {
					return nil, bad(l, `"-" without a modification`)
				}
				c.Mods = append(c.Mods, *m)
				m = nil
			case m == nil:
				op := strings.ToLower(l.name)
				if op != "add" && op != "delete" && op != "replace" {
					return nil, bad(l, "want add:, delete: or replace:, got %s:", l.name)
				}
				m = &ldifMod{Op: op, Attr: strings.TrimSpace(l.val)}
			case strings.EqualFold(l.name, m.Attr):
				m.Values = append(m.Values, l.val)
			default:
				return nil, bad(l, "%s: value of %s inside the %s: %s modification", l.name, l.name, m.Op, m.Attr)
			}
		}
		if m != nil {
			c.Mods = append(c.Mods, *m) // the last "-" is often left out
		}
	default:
		return nil, fmt.Errorf("ldif line %d (%s): changetype %q not supported (add, modify, delete, modrdn)", c.line, c.DN, c.Type)
	}
	return c, nil
}
