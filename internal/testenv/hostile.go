package testenv

import "strings"

// Hostile is an address value every handler must refuse, and why.
type Hostile struct {
	Name  string // a short name for subtests
	Value string // the address as stored in the directory
}

// HostileAddresses are the values the address rule (package address) refuses
// as addresses; the handlers' tests drive each of them through each address
// attribute. Each differs from a valid address by one defect.
func HostileAddresses() []Hostile {
	long := strings.Repeat
	return []Hostile{
		{"leading-space", " alice@example.org"},
		{"trailing-space", "alice@example.org "},
		{"dotdot-local", "../x@example.org"},
		{"dotdot-domain", "alice@../../etc"},
		{"slash", "a/b@example.org"},
		{"leading-dot", ".hidden@example.org"},
		{"control-char", "ctl\x01x@example.org"},
		{"tab", "tab\tx@example.org"},
		{"long-local", long("a", 65) + "@example.org"},
		{"long-domain", "a@" + long(long("d", 60)+".", 4) + long("d", 20) + ".org"},
		{"long-address", long("a", 60) + "@" + long(long("d", 60)+".", 3) + "example.org"},
	}
}

// HostileDomains are mail domain names (a mail domain entry's cn) the
// address rule refuses.
func HostileDomains() []Hostile {
	return []Hostile{
		{"dotdot", "../../etc"},
		{"leading-dot", ".example.org"},
		{"slash", "example.org/x"},
		{"trailing-space", "example.org "},
		{"control-char", "exa\x01mple.org"},
		{"long-label", strings.Repeat("d", 64) + ".org"},
	}
}

// HostileHosts are home server values (univentionMailHomeServer) the
// address rule refuses as host names.
func HostileHosts() []Hostile {
	return []Hostile{
		{"leading-space", " mail.example.org"},
		{"trailing-space", "mail.example.org "},
		{"two-trailing-dots", "mail.example.org.."},
		{"slash", "mail.example.org/x"},
		{"bracket", "mx2]x.example.org"},
		{"dotdot", "../etc"},
	}
}
