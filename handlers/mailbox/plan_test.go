package mailbox_test

import (
	"strings"
	"testing"

	"mailsync/handlers/mailbox"
)

// TestPlanFor walks the plan through the cases convergence meets: the
// state last applied against the current one, with the homes on disk.
func TestPlanFor(t *testing.T) {
	l, err := mailbox.NewLayout("/spool/%Ld/%Ln")
	if err != nil {
		t.Fatal(err)
	}
	st := func(addr, hs string) *mailbox.State {
		return &mailbox.State{DN: "uid=u,dc=x", Address: addr, HomeServer: hs}
	}
	mine := func(addr string) mailbox.Home {
		return mailbox.Home{Path: "/spool/example.org/" + strings.TrimSuffix(addr, "@example.org"), Address: addr,
			Owner: mailbox.Owner{UUID: "u1", DN: "uid=u,dc=x", Address: addr}}
	}
	other := func(addr string, holds, settled bool) *mailbox.Home {
		return &mailbox.Home{Path: "/spool/example.org/" + strings.TrimSuffix(addr, "@example.org"), Address: addr,
			Owner: mailbox.Owner{UUID: "v2", DN: "uid=v,dc=x", Address: addr}, OwnerHolds: holds, OwnerSettled: settled}
	}
	at := func(addr string) *mailbox.Home { h := mine(addr); return &h }
	for _, c := range []struct {
		name           string
		rename, delete bool
		in             mailbox.Input
		want           string // the plan's steps, as Plan.String says them
		kept           int
	}{
		{"stale event: nothing changed since the last applied state", true, false,
			mailbox.Input{Current: st("c@example.org", ""), Applied: st("c@example.org", ""), Homes: []mailbox.Home{mine("c@example.org")}, Target: at("c@example.org")},
			"nothing to do", 0},
		{"A -> B -> C applied late is A -> C", true, false,
			mailbox.Input{Current: st("c@example.org", ""), Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("a@example.org")}},
			"move /spool/example.org/a -> /spool/example.org/c, mail kept (reference §1.3 branch 4)", 0},
		{"a rename whose record a crash lost: the home the entry owns moves", true, false,
			mailbox.Input{Current: st("c@example.org", ""), Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("b@example.org")}},
			"move /spool/example.org/b -> /spool/example.org/c, mail kept (reference §1.3 branch 4)", 0},
		{"the renamed home in place already: only the folders are ensured", true, false,
			mailbox.Input{Current: st("c@example.org", ""), Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("c@example.org")}, Target: at("c@example.org")},
			"create mailbox of c@example.org at /spool/example.org/c (reference §1.3 branch 4)", 0},
		{"rename=no, delete=no: new mailbox, old address logged out and kept", false, false,
			mailbox.Input{Current: st("b@example.org", ""), Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("a@example.org")}},
			"create mailbox of b@example.org at /spool/example.org/b; keep /spool/example.org/a on disk", 1},
		{"rename=no, delete=yes: the old home goes", false, true,
			mailbox.Input{Current: st("b@example.org", ""), Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("a@example.org")}},
			"create mailbox of b@example.org at /spool/example.org/b; delete /spool/example.org/a", 0},
		{"deleted, delete=no: kept", true, false,
			mailbox.Input{Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("a@example.org")}},
			"keep /spool/example.org/a on disk", 1},
		{"deleted, delete=yes: every home of the entry goes", true, true,
			mailbox.Input{Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("a@example.org"), mine("z@example.org")}},
			"delete /spool/example.org/a (to the trash, then removed); delete /spool/example.org/z", 0},
		{"home server moved away, delete=no", true, false,
			mailbox.Input{Current: st("a@example.org", "other.example.org"), Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("a@example.org")}},
			"keep /spool/example.org/a on disk", 1},
		{"back on this host with a new address: its kept mail follows (rename=yes)", true, false,
			mailbox.Input{Current: st("b@example.org", "mail.example.org"), Applied: st("a@example.org", "other.example.org"), Homes: []mailbox.Home{mine("a@example.org")}},
			"move /spool/example.org/a -> /spool/example.org/b", 0},
		{"reused address, its old owner gone and settled: attic first", true, false,
			mailbox.Input{Current: st("x@example.org", ""), Target: other("x@example.org", false, true)},
			"move /spool/example.org/x, left by entry uid=v,dc=x (uuid v2, address \"x@example.org\"), into the attic; create mailbox of x@example.org", 0},
		{"reused address, its old owner's change not applied yet: wait", true, false,
			mailbox.Input{Current: st("x@example.org", ""), Target: other("x@example.org", false, false)},
			"waits: home /spool/example.org/x of address x@example.org belongs to entry uid=v,dc=x (uuid v2), whose change is not applied here yet", 0},
		{"an address two entries hold at once: refused, nothing done", true, false,
			mailbox.Input{Current: st("x@example.org", ""), Applied: st("a@example.org", ""), Homes: []mailbox.Home{mine("a@example.org")}, Target: other("x@example.org", true, true)},
			"refused, dead-lettered: mailbox x@example.org of entry uid=u,dc=x (uuid u1): home /spool/example.org/x belongs to entry uid=v,dc=x (uuid v2)", 0},
		{"never applied, no home: created", true, false,
			mailbox.Input{Current: st("a@example.org", "")},
			"create mailbox of a@example.org at /spool/example.org/a (reference §1.3 branch 1)", 0},
		{"an address that would leave the spool: refused", true, false,
			mailbox.Input{Current: st("../x@example.org", "")},
			"refused, dead-lettered: mailbox of entry uid=u,dc=x (uuid u1): mailPrimaryAddress \"../x@example.org\"", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.in.UUID = "u1"
			p := mailbox.PlanFor(c.in, mailbox.Settings{Host: "mail.example.org", Rename: c.rename, Delete: c.delete, Layout: l})
			if got := p.String(); !strings.HasPrefix(got, c.want) {
				t.Errorf("plan:\n %s\nwant it to start\n %s", got, c.want)
			}
			if len(p.Kept) != c.kept {
				t.Errorf("%d homes kept by policy, want %d: %+v", len(p.Kept), c.kept, p.Kept)
			}
		})
	}
}
