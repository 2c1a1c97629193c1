package mailbox_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/event"
	"mailsync/internal/testenv"
)

// churnShape sizes a churn run.
type churnShape struct {
	users, groups, changes, deletes, kills int
	seed                                   uint64
}

// The short run is part of `make test`; MAILSYNC_CHURN_FULL=1 runs the full
// one (300 users, 3,000 changes, 16 kills).
// MAILSYNC_CHURN_SEED picks another stream of changes and kill moments.
func churnShapeFromEnv() churnShape {
	s := churnShape{users: 40, groups: 6, changes: 300, deletes: 5, kills: 4, seed: 11}
	if os.Getenv("MAILSYNC_CHURN_FULL") != "" {
		s = churnShape{users: 300, groups: 30, changes: 3000, deletes: 50, kills: 16, seed: 11}
	}
	if v, err := strconv.ParseUint(os.Getenv("MAILSYNC_CHURN_SEED"), 10, 64); err == nil {
		s.seed = v
	}
	return s
}

// churnOp is one directory change.
type churnOp struct {
	kind   string // "modify", "modrdn", "delete"
	dn     string
	newRDN string
	attrs  map[string][]string
}

const otherHost = "other.example.org"

// churnOps generates the changes: renames, double renames, group edits,
// home-server changes (to another host and back, to and from empty),
// modrdns, alternative addresses and deletes, then a last pass bringing
// every user back to this host. Groups follow their members' renames and
// deletes, as UDM keeps uniqueMember in step. Deterministic for a seed, so
// two rigs get the same stream.
func churnOps(s churnShape, base string) []churnOp {
	r := rand.New(rand.NewPCG(s.seed, 1))
	type user struct {
		dn, uid, hs string
		gone        bool
	}
	users := make([]*user, s.users)
	for i := range users {
		users[i] = &user{dn: fmt.Sprintf("uid=u%d,ou=people,%s", i, base), uid: fmt.Sprintf("u%d", i)}
	}
	groups := make([][]int, s.groups) // members by user index
	for g := range groups {
		groups[g] = append(groups[g], r.Perm(s.users)[:3+r.IntN(4)]...)
	}
	var ops []churnOp
	n := 0 // unique suffixes
	live := func() int {
		for {
			if i := r.IntN(s.users); !users[i].gone {
				return i
			}
		}
	}
	members := func(g int) []string {
		var dns []string
		for _, i := range groups[g] {
			dns = append(dns, users[i].dn)
		}
		sort.Strings(dns)
		return dns
	}
	groupDN := func(g int) string { return fmt.Sprintf("cn=g%d,ou=groups,%s", g, base) }
	// follow updates the groups that hold user i after its DN changed or
	// it was deleted.
	follow := func(i int, gone bool) {
		for g := range groups {
			held := false
			var kept []int
			for _, m := range groups[g] {
				if m == i {
					held = true
					if gone {
						continue
					}
				}
				kept = append(kept, m)
			}
			if !held {
				continue
			}
			if len(kept) == 0 {
				kept = []int{live()}
			}
			groups[g] = kept
			ops = append(ops, churnOp{kind: "modify", dn: groupDN(g), attrs: map[string][]string{"uniqueMember": members(g)}})
		}
	}
	rename := func(i int) {
		n++
		ops = append(ops, churnOp{kind: "modify", dn: users[i].dn,
			attrs: map[string][]string{"mailPrimaryAddress": {fmt.Sprintf("u%d-%d@example.org", i, n)}}})
	}
	deleteAt := map[int]bool{}
	for _, k := range r.Perm(s.changes)[:s.deletes] {
		deleteAt[k] = true
	}
	for k := 0; k < s.changes; k++ {
		i := live()
		u := users[i]
		if deleteAt[k] {
			u.gone = true
			ops = append(ops, churnOp{kind: "delete", dn: u.dn})
			follow(i, true)
			continue
		}
		switch p := r.IntN(100); {
		case p < 35:
			rename(i)
		case p < 45:
			rename(i)
			rename(i)
		case p < 60:
			g := r.IntN(s.groups)
			var set []int
			for _, m := range r.Perm(s.users)[:2+r.IntN(5)] {
				if !users[m].gone {
					set = append(set, m)
				}
			}
			if len(set) == 0 {
				set = []int{i}
			}
			groups[g] = set
			ops = append(ops, churnOp{kind: "modify", dn: groupDN(g), attrs: map[string][]string{"uniqueMember": members(g)}})
		case p < 70:
			switch {
			case u.hs == otherHost:
				u.hs = host
			case r.IntN(3) == 0:
				u.hs = otherHost
			case u.hs == "":
				u.hs = host
			default:
				u.hs = ""
			}
			v := []string{}
			if u.hs != "" {
				v = []string{u.hs}
			}
			ops = append(ops, churnOp{kind: "modify", dn: u.dn, attrs: map[string][]string{"univentionMailHomeServer": v}})
		case p < 80:
			n++
			u.uid = fmt.Sprintf("u%d-r%d", i, n)
			ops = append(ops, churnOp{kind: "modrdn", dn: u.dn, newRDN: "uid=" + u.uid})
			u.dn = fmt.Sprintf("uid=%s,ou=people,%s", u.uid, base)
			follow(i, false)
		default:
			n++
			ops = append(ops, churnOp{kind: "modify", dn: u.dn,
				attrs: map[string][]string{"mailAlternativeAddress": {fmt.Sprintf("a%d-%d@example.org", i, n)}}})
		}
	}
	for _, u := range users {
		if !u.gone && u.hs == otherHost {
			ops = append(ops, churnOp{kind: "modify", dn: u.dn, attrs: map[string][]string{"univentionMailHomeServer": {host}}})
		}
	}
	return ops
}

// churnRig is a slapd, a Dovecot, a Postfix for postmap and the real
// `mailsync run` with the mailbox, aliases and homeserver handlers.
type churnRig struct {
	t     *testing.T
	shape churnShape
	ldap  *testenv.Slapd
	dc    *testenv.Dovecot
	pf    *testenv.Postfix
	bin   string
	cfg   string
	dir   string
	log   *os.File
	cmd   *exec.Cmd
	kills int
}

func newChurnRig(t *testing.T, bin string, s churnShape) *churnRig {
	ldap := testenv.StartSlapd(t)
	dc := testenv.StartDovecot(t, ldap, testenv.DovecotOptions{FQDN: host})
	r := &churnRig{t: t, shape: s, ldap: ldap, dc: dc, pf: testenv.StartPostfix(t), bin: bin, dir: t.TempDir()}
	r.cfg = testenv.NewMailsyncConfig(t, r.dir).Set("host", host).Handlers("mailbox", "aliases", "homeserver").
		Slapd(ldap).Dovecot(dc).Postfix(r.pf, "").
		// The run's 50 deletes are ordinary ones, but the refresh after a
		// kill sees every delete made while the listener was down at once;
		// the guard has tests of its own.
		Set("listener.mass_delete_min", 100000).
		Write("")
	var err error
	if r.log, err = os.Create(filepath.Join(r.dir, "mailsync.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r.cmd != nil {
			r.cmd.Process.Kill()
			r.cmd.Wait()
		}
		r.log.Close()
		if t.Failed() {
			t.Logf("mailsync log tail:\n%s", r.logTail(40))
		}
	})
	return r
}

func (r *churnRig) logTail(n int) string {
	data, _ := os.ReadFile(filepath.Join(r.dir, "mailsync.log"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logMatching returns the last n log lines matching pattern.
func (r *churnRig) logMatching(pattern string, n int) string {
	re := regexp.MustCompile(pattern)
	data, _ := os.ReadFile(filepath.Join(r.dir, "mailsync.log"))
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}

func (r *churnRig) start() {
	r.cmd = exec.Command(r.bin, "run", "-c", r.cfg)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
}

// kill SIGKILLs the daemon and starts it again.
func (r *churnRig) kill() {
	r.cmd.Process.Signal(syscall.SIGKILL)
	r.cmd.Wait()
	r.kills++
	r.start()
}

func (r *churnRig) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			r.t.Errorf("mailsync exit on SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
		<-done
		r.t.Errorf("mailsync did not stop on SIGTERM")
	}
	r.cmd = nil
}

// verb runs a mailsync verb against the rig's config.
func (r *churnRig) verb(args ...string) (string, int) {
	var out bytes.Buffer
	cmd := exec.Command(r.bin, append(args, "-c", r.cfg)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	}
	r.t.Fatalf("mailsync %v: %v", args, err)
	return "", -1
}

// populate adds the users and groups, starts the daemon, waits for every
// mailbox and gives each user one message.
func (r *churnRig) populate() {
	t := r.t
	s := r.shape
	for i := 0; i < s.users; i++ {
		r.ldap.AddUser(t, fmt.Sprintf("u%d", i), fmt.Sprintf("u%d@example.org", i), nil)
	}
	rnd := rand.New(rand.NewPCG(s.seed, 1))
	for g := 0; g < s.groups; g++ {
		var members []string
		for _, i := range rnd.Perm(s.users)[:3+rnd.IntN(4)] {
			members = append(members, r.ldap.UserDN(fmt.Sprintf("u%d", i)))
		}
		sort.Strings(members)
		r.ldap.AddGroup(t, fmt.Sprintf("g%d", g), fmt.Sprintf("g%d@example.org", g), members, nil)
	}
	r.start()
	testenv.Eventually(t, 120*time.Second, func() error {
		for i := 0; i < s.users; i++ {
			if !dirExists(filepath.Join(r.dc.Home(fmt.Sprintf("u%d@example.org", i)), "Maildir", ".Spam")) {
				return fmt.Errorf("mailbox of u%d not created yet", i)
			}
		}
		return nil
	})
	for i := 0; i < s.users; i++ {
		r.dc.Deliver(t, fmt.Sprintf("u%d@example.org", i), fmt.Sprintf("churn-%d", i))
	}
}

// apply makes the changes, killing the daemon at kills random moments.
func (r *churnRig) apply(ops []churnOp, kills int) {
	t := r.t
	rnd := rand.New(rand.NewPCG(r.shape.seed, 2))
	killAt := map[int]bool{}
	for _, k := range rnd.Perm(len(ops) - len(ops)/10)[:max(kills-1, 0)] {
		killAt[k+len(ops)/10] = true
	}
	for k, op := range ops {
		if killAt[k] {
			time.Sleep(time.Duration(rnd.IntN(400)) * time.Millisecond)
			r.kill()
		}
		switch op.kind {
		case "modify":
			r.ldap.Modify(t, op.dn, op.attrs)
		case "modrdn":
			r.ldap.ModRDN(t, op.dn, op.newRDN, "")
		case "delete":
			r.ldap.Delete(t, op.dn)
		}
	}
	if kills > 0 {
		// One more while it catches up.
		time.Sleep(time.Duration(500+rnd.IntN(1500)) * time.Millisecond)
		r.kill()
	}
}

var statusLine = regexp.MustCompile(`^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$`)

// settle waits until `mailsync check` passes and every consumer has acked
// everything; it returns the dead letters counted by `mailsync status`.
func (r *churnRig) settle(timeout time.Duration) (dead int, checkOut string) {
	t := r.t
	deadline := time.Now().Add(timeout)
	for {
		out, code := r.verb("check")
		checkOut = out
		if code == 0 {
			st, _ := r.verb("status")
			pending, consumers := 0, 0
			dead = 0
			sc := bufio.NewScanner(strings.NewReader(st))
			for sc.Scan() {
				if m := statusLine.FindStringSubmatch(strings.TrimSpace(sc.Text())); m != nil {
					consumers++
					p, _ := strconv.Atoi(m[2])
					u, _ := strconv.Atoi(m[3])
					d, _ := strconv.Atoi(m[5])
					pending += p + u
					dead += d
				}
			}
			if consumers == 3 && pending == 0 {
				return dead, checkOut
			}
		}
		if time.Now().After(deadline) {
			var drift []string
			for _, l := range strings.Split(out, "\n") {
				if !strings.HasPrefix(l, "kept by policy") {
					drift = append(drift, l)
				}
			}
			st, _ := r.verb("status")
			t.Fatalf("not settled after %s; last check (exit %d), homes kept by policy left out:\n%s\nstatus:\n%s\nlast warnings and retries:\n%s",
				timeout, code, firstLines(strings.Join(drift, "\n"), 30), st, r.logMatching(`"level":"(warn|error)"|will retry`, 20))
		}
		time.Sleep(time.Second)
	}
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], fmt.Sprintf("... (%d more)", len(lines)-n))
	}
	return strings.Join(lines, "\n")
}

var churnSubject = regexp.MustCompile(`(?m)^Subject: churn-(\d+)\r?$`)

// outcome is a rig's final state in terms both rigs share (user numbers
// and addresses, not entryUUIDs): where each user's message is, and what
// every address expands to.
type outcome struct {
	lines                              []string
	live, lost, misplaced, deletedKept int
	imapBad                            []string
	mapBad                             []string
}

// measure reads the final state and compares it with the final directory.
func (r *churnRig) measure() outcome {
	t := r.t
	var o outcome
	// Who is where, by the directory.
	entries := r.ldap.Entries(t)
	addrOf := map[int]string{} // user number -> current address
	byDN := map[string]event.Entry{}
	for _, e := range entries {
		byDN[strings.ToLower(e.DN)] = e
		if e.Kind != event.KindUser {
			continue
		}
		var i int
		if _, err := fmt.Sscanf(e.Attrs.First(event.AttrUID), "u%d", &i); err != nil {
			t.Fatalf("uid %q", e.Attrs.First(event.AttrUID))
		}
		addrOf[i] = e.Attrs.FirstLower(event.AttrPrimaryAddress)
	}
	// Where each message is, on disk (mailsync's own dirs included: a
	// message in the trash or the attic is not where its user reads it).
	found := map[int][]string{}
	filepath.WalkDir(r.dc.Spool, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if b := filepath.Base(filepath.Dir(p)); b != "cur" && b != "new" {
			return nil
		}
		data, _ := os.ReadFile(p)
		if m := churnSubject.FindSubmatch(data); m != nil {
			i, _ := strconv.Atoi(string(m[1]))
			found[i] = append(found[i], p)
		}
		return nil
	})
	for i := 0; i < r.shape.users; i++ {
		addr, live := addrOf[i]
		if !live {
			if len(found[i]) > 0 {
				o.deletedKept++
			}
			continue
		}
		o.live++
		home := r.dc.Home(addr)
		var at []string
		for _, p := range found[i] {
			rel, _ := filepath.Rel(r.dc.Spool, p)
			at = append(at, rel)
		}
		switch {
		case len(found[i]) == 0:
			o.lost++
		case len(found[i]) != 1 || !strings.HasPrefix(found[i][0], home+"/Maildir/"):
			o.misplaced++
			t.Logf("u%d (%s): message at %v", i, addr, at)
		}
		if got := r.dc.MailboxSummary(t, addr); got["INBOX"].Messages != 1 {
			o.imapBad = append(o.imapBad, fmt.Sprintf("u%d %s: %v", i, addr, got))
		}
		o.lines = append(o.lines, fmt.Sprintf("u%d %s message in INBOX", i, addr))
	}

	// Every map answers as the final directory expands, computed here on
	// its own: a user's primary address is final, an alternative address
	// leads to the primary, a group to its members' primaries; addresses
	// no longer in the directory are unknown; every user is on this host,
	// so no transport entry.
	want := map[string][]string{}
	mailboxes := map[string]bool{}
	for _, e := range entries {
		p := e.Attrs.FirstLower(event.AttrPrimaryAddress)
		switch e.Kind {
		case event.KindUser:
			if p == "" {
				continue
			}
			want[p] = []string{p}
			mailboxes[p] = true
			for _, a := range e.Attrs[event.AttrAlternativeAddress] {
				want[strings.ToLower(a)] = []string{p}
			}
		case event.KindGroup:
			set := map[string]bool{}
			for _, m := range e.Attrs[event.AttrUniqueMember] {
				if u, ok := byDN[strings.ToLower(m)]; ok && u.Kind == event.KindUser {
					if a := u.Attrs.FirstLower(event.AttrPrimaryAddress); a != "" {
						set[a] = true
					}
				}
			}
			var l []string
			for a := range set {
				l = append(l, a)
			}
			sort.Strings(l)
			if p != "" && len(l) > 0 {
				want[p] = l
			}
		}
	}
	// Every address the run ever used.
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for i := 0; i < r.shape.users; i++ {
		keys[fmt.Sprintf("u%d@example.org", i)] = true
	}
	for _, op := range churnOps(r.shape, r.ldap.BaseDN) {
		for _, vs := range op.attrs {
			for _, v := range vs {
				if strings.Contains(v, "@") && !strings.Contains(v, "=") {
					keys[v] = true
				}
			}
		}
	}
	var all []string
	for k := range keys {
		all = append(all, k)
	}
	sort.Strings(all)
	mapDir := filepath.Join(r.dir, "maps")
	alias := r.pf.Query(t, "hash:"+filepath.Join(mapDir, "virtual_alias"), all...)
	vmb := r.pf.Query(t, "hash:"+filepath.Join(mapDir, "virtual_mailbox"), all...)
	transport := r.pf.Query(t, "hash:"+filepath.Join(mapDir, "transport"), all...)
	// finals follows virtual_alias as Postfix's cleanup does.
	var finals func(a string, seen map[string]bool) []string
	finals = func(a string, seen map[string]bool) []string {
		if seen[a] {
			return nil
		}
		seen[a] = true
		v, ok := alias[a]
		if !ok {
			return []string{a}
		}
		var out []string
		for _, x := range strings.Split(v, ",") {
			x = strings.TrimSpace(x)
			if x == a {
				out = append(out, a)
				continue
			}
			if _, known := alias[x]; !known {
				more := r.pf.Query(t, "hash:"+filepath.Join(mapDir, "virtual_alias"), x)
				for k, v := range more {
					alias[k] = v
				}
			}
			out = append(out, finals(x, seen)...)
		}
		return out
	}
	for _, k := range all {
		var got []string
		if _, ok := alias[k]; ok || vmb[k] != "" {
			set := map[string]bool{}
			for _, a := range finals(k, map[string]bool{}) {
				set[a] = true
			}
			for a := range set {
				got = append(got, a)
			}
			sort.Strings(got)
		}
		exp := want[k]
		if strings.Join(got, ",") != strings.Join(exp, ",") {
			o.mapBad = append(o.mapBad, fmt.Sprintf("%s expands to %v, the directory to %v", k, got, exp))
		}
		if (vmb[k] != "") != mailboxes[k] {
			o.mapBad = append(o.mapBad, fmt.Sprintf("virtual_mailbox %s: %q, want a mailbox: %v", k, vmb[k], mailboxes[k]))
		}
		if v, ok := transport[k]; ok {
			o.mapBad = append(o.mapBad, fmt.Sprintf("transport %s: %q, every user is on this host", k, v))
		}
		o.lines = append(o.lines, fmt.Sprintf("%s -> %v", k, got))
	}
	sort.Strings(o.lines)
	return o
}

// TestChurnWithKills: users with one message each, then a stream of
// ordinary changes (renames, double renames, group edits, home-server
// changes, modrdns, alternative addresses, deletes; default policy) while
// the real `mailsync run` is SIGKILLed at random moments and restarted.
// Afterwards every message is readable over IMAP at its user's current
// address (none in an old home, none lost), no valid change was
// dead-lettered, every map answers as the final directory expands, and
// `mailsync check` passes. The same stream without kills, on a rig of its
// own, ends in the same state. The full size runs with
// MAILSYNC_CHURN_FULL=1.
func TestChurnWithKills(t *testing.T) {
	t.Parallel()
	s := churnShapeFromEnv()
	t.Logf("churn: %d users, %d changes (%d deletes), %d kills, seed %d", s.users, s.changes, s.deletes, s.kills, s.seed)
	bin := testenv.BuildMailsync(t)
	type result struct {
		o     outcome
		dead  int
		kills int
		took  time.Duration
		check string
		why   string // the log lines of the dead letters
	}
	run := func(t *testing.T, kills int) result {
		r := newChurnRig(t, bin, s)
		r.populate()
		ops := churnOps(s, r.ldap.BaseDN)
		start := time.Now()
		r.apply(ops, kills)
		dead, check := r.settle(10 * time.Minute)
		took := time.Since(start)
		why := r.logMatching(`dead-lettered|will retry|not completed|superseded`, 40)
		r.stop()
		return result{o: r.measure(), dead: dead, kills: r.kills, took: took, check: check, why: why}
	}
	var withKills, without result
	t.Run("rigs", func(t *testing.T) {
		t.Run(fmt.Sprintf("kills=%d", s.kills), func(t *testing.T) {
			t.Parallel()
			withKills = run(t, s.kills)
		})
		t.Run("kills=0", func(t *testing.T) {
			t.Parallel()
			without = run(t, 0)
		})
	})
	if t.Failed() {
		return
	}
	for _, res := range []result{withKills, without} {
		t.Logf("kills=%d: %d changes applied in %s; %d live users, %d lost, %d misplaced, %d deleted users' messages kept; %d dead letters; %d IMAP and %d map disagreements; check: %s",
			res.kills, len(churnOps(s, "dc=x")), res.took.Round(time.Second), res.o.live, res.o.lost, res.o.misplaced, res.o.deletedKept, res.dead,
			len(res.o.imapBad), len(res.o.mapBad), strings.TrimSpace(lastLine(res.check)))
		if res.o.lost > 0 || res.o.misplaced > 0 {
			t.Errorf("kills=%d: %d messages lost, %d not at their user's current address", res.kills, res.o.lost, res.o.misplaced)
		}
		if res.dead > 0 {
			t.Errorf("kills=%d: %d dead letters:\n%s", res.kills, res.dead, res.why)
		}
		for _, b := range append(res.o.imapBad, res.o.mapBad...) {
			t.Errorf("kills=%d: %s", res.kills, b)
		}
	}
	if withKills.kills < s.kills {
		t.Errorf("%d kills, want %d", withKills.kills, s.kills)
	}
	if a, b := strings.Join(withKills.o.lines, "\n"), strings.Join(without.o.lines, "\n"); a != b {
		t.Errorf("the run with kills ended elsewhere than the run without")
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
