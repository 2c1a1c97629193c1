package aliases

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"mailsync/internal/testenv"
)

// The real mailsync binary, following a preloaded slapd, is killed with
// SIGKILL at random moments while alias-map rewrites are in flight (a temp
// file is in the map directory). Each time: the live tables it leaves are
// readable; after a restart the maps equal a fresh full build from the
// directory, source and database alike, and no temp file is left.
func TestSIGKILLDuringRewrites(t *testing.T) {
	t.Parallel()
	const users, groups = 5000, 400
	start := time.Now()
	s := testenv.StartSlapdWith(t, testenv.SlapdOptions{Preload: testenv.GenerateLDIF(t, base, testenv.DirectoryShape{
		Users: users, Groups: groups, Members: 25, Nested: 2})})
	pf := testenv.StartPostfix(t)
	bin := testenv.BuildMailsync(t)
	d := &daemon{t: t, bin: bin, dir: t.TempDir()}
	d.maps = filepath.Join(d.dir, "maps")
	d.writeConfig(s, pf)
	t.Logf("slapd with %d users, %d groups, and the mailsync binary ready in %s", users, groups, time.Since(start).Round(time.Millisecond))

	// The maps equal what a fresh model builds from the directory.
	matches := func() error {
		want := fullBuildTables(s.Entries(t), hostFQDN, DefaultExpansionLimit)
		for _, tb := range want {
			src, err := os.ReadFile(filepath.Join(d.maps, tb.Name))
			if err != nil {
				return err
			}
			if !bytes.Equal(src, tb.Src) {
				return fmt.Errorf("%s: source differs from a full build (%d bytes, want %d)", tb.Name, len(src), len(tb.Src))
			}
			got, err := dumpTable(pf, "hash:"+filepath.Join(d.maps, tb.Name))
			if err != nil {
				return err
			}
			if w := sourceLines(tb.Src); !eq(got, w) {
				return fmt.Errorf("%s: postmap -s gives %d entries, a full build %d", tb.Name, len(got), len(w))
			}
		}
		return nil
	}
	// The first start is killed once the listener has the whole directory
	// in the stream; the restart loads it at once rather than through one
	// event per entry.
	begin := time.Now()
	d.start()
	testenv.Eventually(t, 60*time.Second, func() error {
		if data, _ := os.ReadFile(filepath.Join(d.dir, "mailsync.log")); !bytes.Contains(data, []byte("directory refresh done")) {
			return fmt.Errorf("listener's initial refresh not done")
		}
		return nil
	})
	d.kill()
	t.Logf("initial refresh in the stream after %s", time.Since(begin).Round(time.Millisecond))
	d.start()
	testenv.Eventually(t, 60*time.Second, matches)
	t.Logf("maps equal a full build after %s", time.Since(begin).Round(time.Millisecond))

	r := rand.New(rand.NewPCG(7, 7))
	mid := 0
	const kills = 3
	for round := 0; round < kills; round++ {
		// Watch the map directory; once a rewrite is in flight, wait a
		// random moment and kill.
		var killed atomic.Bool
		stop := make(chan struct{})
		watched := make(chan int)
		delay := time.Duration(r.IntN(4000)) * time.Microsecond
		go func() {
			defer close(watched)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if len(tempFiles(d.maps)) > 0 {
					time.Sleep(delay)
					d.kill()
					killed.Store(true)
					watched <- len(tempFiles(d.maps))
					return
				}
				time.Sleep(200 * time.Microsecond)
			}
		}()
		// A burst of membership changes until the kill.
		deadline := time.Now().Add(30 * time.Second)
		for n := 0; !killed.Load(); n++ {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no rewrite seen in flight after %d changes", round, n)
			}
			g := r.IntN(groups)
			var mem []string
			for k := 0; k < 25; k++ {
				mem = append(mem, fmt.Sprintf("uid=u%d,ou=people,%s", r.IntN(users), base))
			}
			mem = uniq(mem)
			if g > 0 && r.IntN(2) == 0 {
				mem = append(mem, fmt.Sprintf("cn=g%d,ou=groups,%s", r.IntN(g), base))
			}
			s.Modify(t, fmt.Sprintf("cn=g%d,ou=groups,%s", g, base), map[string][]string{"uniqueMember": mem})
		}
		close(stop)
		left := <-watched
		if left > 0 {
			mid++
		}
		// What the kill left is still a set of complete tables.
		for _, name := range []string{DomainMap, MailboxMap, AliasMap} {
			if _, err := dumpTable(pf, "hash:"+filepath.Join(d.maps, name)); err != nil {
				t.Fatalf("round %d: after SIGKILL %s is unreadable: %v", round, name, err)
			}
		}
		t.Logf("round %d: killed %s after a rewrite began, %d temp files left behind", round, delay, left)

		d.start()
		start := time.Now()
		testenv.Eventually(t, 60*time.Second, matches)
		if left := tempFiles(d.maps); len(left) > 0 {
			t.Fatalf("round %d: temp files after restart: %v", round, left)
		}
		t.Logf("round %d: maps equal a full build %s after restart", round, time.Since(start).Round(time.Millisecond))
	}
	if mid == 0 {
		t.Errorf("none of %d kills caught a rewrite with its temp files in place", kills)
	}
}

// daemon runs the mailsync binary with the aliases handler only.
type daemon struct {
	t    *testing.T
	bin  string
	dir  string
	maps string
	cfg  string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

func (d *daemon) writeConfig(s *testenv.Slapd, pf *testenv.Postfix) {
	t := d.t
	d.cfg = testenv.NewMailsyncConfig(t, d.dir).Set("host", hostFQDN).Handlers("aliases").
		Slapd(s).Postfix(pf, d.maps).Set("log.level", "info").Write("")
	t.Cleanup(func() {
		if d.cmd != nil {
			d.kill()
		}
		if t.Failed() {
			data, _ := os.ReadFile(filepath.Join(d.dir, "mailsync.log"))
			lines := strings.Split(string(data), "\n")
			t.Logf("mailsync log (tail):\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
}

func (d *daemon) start() {
	t := d.t
	logf, err := os.OpenFile(filepath.Join(d.dir, "mailsync.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(d.bin, "run", "-c", d.cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mailsync: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	d.cmd, d.done, d.log = cmd, done, logf
}

// kill sends SIGKILL and waits for the process to be gone.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.done
	d.log.Close()
	d.cmd = nil
}

func tempFiles(dir string) []string {
	left, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*"))
	return left
}

// dumpTable lists a table's entries as "key value" lines, sorted, with
// postmap -s, which reads the database Postfix reads.
func dumpTable(pf *testenv.Postfix, table string) ([]string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(pf.Postmap, "-c", pf.ConfigDir, "-s", table)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("postmap -s %s: %v: %s", table, err, stderr.String())
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "\t")
		lines = append(lines, k+" "+v)
	}
	sort.Strings(lines)
	return lines, sc.Err()
}

// sourceLines is the table a source holds: its lines sorted, without the
// comments a change made in place leaves.
func sourceLines(src []byte) []string {
	var lines []string
	for _, l := range strings.Split(string(src), "\n") {
		if l != "" && l[0] != '#' {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	return lines
}
