package config

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Policy is the policy section, merged over the UCR file and the defaults
// and parsed once: the typed values the handlers act on, and every UCR
// setting mailsync reads as a string (Settings) for the renderers of the
// servers' configuration (package mailconf), which check their own.
type Policy struct {
	Rename           bool // mail/dovecot/mailbox/rename
	Delete           bool // mail/dovecot/mailbox/delete
	SeparateIndex    bool // mail/dovecot/location/separate_index
	MoveOnHomeChange bool // mail/dovecot/mailbox/move_on_homeserver_change
	FolderSpam       string
	FolderHam        string
	ExpansionLimit   int // virtual_alias_expansion_limit

	// Settings are the values by UCR name: the defaults, then the UCR
	// file's, then the policy section's.
	Settings map[string]string

	given map[string]string // the policy section as written
}

// UnmarshalYAML keeps the policy section as written; Parse merges and
// parses it.
func (p *Policy) UnmarshalYAML(n *yaml.Node) error {
	return n.Decode(&p.given)
}

// merge sets Settings from the defaults, ucr and the section as written,
// and parses the typed values, each error naming its key.
func (p *Policy) merge(ucr map[string]string) Errors {
	var errs Errors
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("policy.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	set := policyDefaults()
	for k, v := range ucr {
		if IsPolicyKey(k) && v != "" {
			set[k] = v
		}
	}
	for _, k := range slices.Sorted(maps.Keys(p.given)) {
		if !IsPolicyKey(k) {
			bad(k, "unknown policy setting")
			continue
		}
		set[k] = p.given[k]
	}
	p.Settings = set
	for _, f := range []struct {
		key string
		dst *bool
	}{
		{KeyRename, &p.Rename}, {KeyDelete, &p.Delete},
		{KeySeparateIndex, &p.SeparateIndex}, {KeyMoveOnHomeChange, &p.MoveOnHomeChange},
	} {
		b, err := parseBool(set[f.key])
		if err != nil {
			bad(f.key, "%v", err)
		}
		*f.dst = b
	}
	p.FolderSpam, p.FolderHam = set[KeyFolderSpam], set[KeyFolderHam]
	n, err := strconv.Atoi(strings.TrimSpace(set[KeyExpansionLimit]))
	if err != nil || n < 1 {
		bad(KeyExpansionLimit, "want a positive number, got %q", set[KeyExpansionLimit])
	}
	p.ExpansionLimit = n
	return errs
}
