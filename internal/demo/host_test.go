package demo

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailsync/internal/testenv"
)

// bystander is a process the host runs that mailsync's scripts did not start:
// a copy of sleep named like a packaged daemon, so a kill by process name or a
// service stop would end it.
type bystander struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startBystander(t *testing.T, name string) *bystander {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &bystander{name: name, cmd: exec.Command(bin, "3600"), done: make(chan struct{})}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		b.cmd.Process.Kill()
		<-b.done
	})
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", b.cmd.Process.Pid))
	if strings.TrimSpace(string(comm)) != name {
		t.Fatalf("bystander runs as %q, want %q", comm, name)
	}
	return b
}

func (b *bystander) alive(t *testing.T, after string) {
	t.Helper()
	select {
	case <-b.done:
		t.Errorf("the unrelated process %q (pid %d) was ended by %s: %v", b.name, b.cmd.Process.Pid, after, b.cmd.ProcessState)
	default:
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// shims writes stand-ins for the package tools into a dir put first on
// PATH: dpkg-query reports every package installed but those in missing;
// apt-get and debconf-set-selections record their calls in log (apt-get
// notes whether policy-rc.d was in place, and with slow set, signals that it
// started and takes a few seconds).
func shims(t *testing.T, dir, log, missing string, slow bool) {
	t.Helper()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("dpkg-query", fmt.Sprintf(`for p in "$@"; do case "$p" in -*|'${Package}'*) continue;; esac
  case " %s " in *" $p "*) ;; *) echo "$p ii ";; esac
done
`, missing))
	sleep := ""
	if slow {
		sleep = `touch "$(dirname "` + log + `")/apt-started"; sleep 3`
	}
	write("apt-get", fmt.Sprintf(`echo "apt-get $* policy=$(test -x "$MAILSYNC_POLICY_RC_D" && "$MAILSYNC_POLICY_RC_D"; echo $?)" >>%q
case "$1" in install) %s;; esac
`, log, sleep))
	write("debconf-set-selections", fmt.Sprintf(`echo "debconf $(cat)" >>%q
`, log))
}

// TestLeavesHostAlone runs scripts/install-deps.sh and the demo beside
// running processes named slapd and dovecot that they did not start, and
// shows that both survive, that only missing packages are installed and
// preseeded, and that policy-rc.d is created only when absent and removed
// again, on a signal too.
func TestLeavesHostAlone(t *testing.T) {
	testenv.Integration(t, "the install and demo scripts")
	slapd := startBystander(t, "slapd")
	dovecot := startBystander(t, "dovecot")
	root := repoRoot(t)
	script := filepath.Join(root, "scripts", "install-deps.sh")

	t.Run("real", func(t *testing.T) {
		// On this host every package is installed: nothing to do.
		out, err := exec.Command("bash", script).CombinedOutput()
		if err != nil {
			t.Fatalf("install-deps.sh: %v\n%s", err, out)
		}
		if len(out) != 0 {
			t.Errorf("install-deps.sh on a complete host printed %q", out)
		}
		slapd.alive(t, "install-deps.sh")
		dovecot.alive(t, "install-deps.sh")
	})

	run := func(t *testing.T, missing string, slow bool, policy string) (*exec.Cmd, string, *strings.Builder) {
		dir := t.TempDir()
		log := filepath.Join(dir, "calls.log")
		shims(t, dir, log, missing, slow)
		cmd := exec.Command("bash", script)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "MAILSYNC_POLICY_RC_D="+policy)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, log, &out
	}
	calls := func(t *testing.T, log string) string {
		data, err := os.ReadFile(log)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return string(data)
	}

	t.Run("missing", func(t *testing.T) {
		policy := filepath.Join(t.TempDir(), "policy-rc.d")
		cmd, log, out := run(t, "slapd postfix-cdb", false, policy)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("install-deps.sh: %v\n%s", err, out)
		}
		got := calls(t, log)
		want := "debconf slapd slapd/no_configuration boolean true\n" +
			"apt-get update -qq policy=101\n" +
			"apt-get install -y -qq --no-install-recommends slapd postfix-cdb policy=101\n"
		if got != want {
			t.Errorf("calls:\n%s\nwant:\n%s", got, want)
		}
		if _, err := os.Stat(policy); !os.IsNotExist(err) {
			t.Errorf("policy-rc.d left behind: %v", err)
		}
		slapd.alive(t, "install-deps.sh")
		dovecot.alive(t, "install-deps.sh")
	})

	t.Run("existing policy", func(t *testing.T) {
		policy := filepath.Join(t.TempDir(), "policy-rc.d")
		const theirs = "#!/bin/sh\nexit 0\n"
		if err := os.WriteFile(policy, []byte(theirs), 0o755); err != nil {
			t.Fatal(err)
		}
		cmd, log, out := run(t, "postfix", false, policy)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("install-deps.sh: %v\n%s", err, out)
		}
		if got := calls(t, log); !strings.Contains(got, "debconf postfix postfix/main_mailer_type") ||
			strings.Contains(got, "slapd") || !strings.Contains(got, "install -y -qq --no-install-recommends postfix policy=0") {
			t.Errorf("calls:\n%s", got)
		}
		if data, err := os.ReadFile(policy); err != nil || string(data) != theirs {
			t.Errorf("the host's own policy-rc.d changed: %q, %v", data, err)
		}
	})

	t.Run("signal", func(t *testing.T) {
		policy := filepath.Join(t.TempDir(), "policy-rc.d")
		cmd, log, out := run(t, "dovecot-core", true, policy)
		started := filepath.Join(filepath.Dir(log), "apt-started")
		testenv.Eventually(t, 10*time.Second, func() error {
			_, err := os.Stat(started)
			return err
		})
		if _, err := os.Stat(policy); err != nil {
			t.Fatalf("policy-rc.d not in place while apt-get runs: %v", err)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err == nil {
			t.Errorf("install-deps.sh exited 0 after SIGTERM:\n%s", out)
		}
		if strings.Contains(out.String(), "installed:") {
			t.Errorf("install-deps.sh went on after SIGTERM:\n%s", out)
		}
		if _, err := os.Stat(policy); !os.IsNotExist(err) {
			t.Errorf("policy-rc.d left behind after SIGTERM: %v", err)
		}
	})

	t.Run("demo", func(t *testing.T) {
		testDemoCleanup(t, root)
		slapd.alive(t, "the demo")
		dovecot.alive(t, "the demo")
	})
}

// testDemoCleanup runs `scripts/demo.sh` as `make demo` does, presses
// Ctrl-C (SIGINT to its process group, as a terminal does) once it waits,
// and checks that it cleaned up: exit 0 and its servers' ports closed.
func testDemoCleanup(t *testing.T, root string) {
	goBin, err := testenv.GoTool()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "demo.sh"))
	cmd.Env = append(os.Environ(), "MAILSYNC_BIN="+testenv.BuildRelease(t), "MAILSYNC_DEMO_BIN_DIR="+t.TempDir(),
		"PATH="+filepath.Dir(goBin)+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	pgid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	exited := make(chan error, 1)
	var output strings.Builder
	waiting := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			output.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "press Ctrl-C") && !once {
				once = true
				close(waiting)
			}
		}
		exited <- cmd.Wait()
	}()
	select {
	case <-waiting:
	case err := <-exited:
		t.Fatalf("demo ended before waiting for Ctrl-C: %v\n%s", err, output.String())
	case <-time.After(5 * time.Minute):
		t.Fatalf("demo not ready after 5 minutes")
	}
	syscall.Kill(-pgid, syscall.SIGINT)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("demo exited with %v after Ctrl-C", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("demo still running 60s after Ctrl-C")
	}
	out := output.String()
	if !strings.Contains(out, "== demo finished cleanly") {
		t.Errorf("demo output:\n%s", out)
	}
	// Its servers are gone: the ports it printed no longer accept.
	m := regexp.MustCompile(`slapd ldap://(\S+)\s+IMAP (\S+)\s+LMTP (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("demo did not print its servers:\n%s", out)
	}
	for _, addr := range m[1:] {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts after the demo ended", addr)
		}
	}
}
