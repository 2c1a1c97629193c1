//go:build mailsync_testhooks

package main

import (
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"mailsync/handlers/mailbox"
)

// crashEnv names a step of a mailbox operation at which the process kills
// itself with SIGKILL. It exists for the crash-safety tests of
// handlers/mailbox, which must kill a real process mid-operation, and only
// in a binary built with the mailsync_testhooks tag
// (testenv.BuildMailsync); the release build (testhooks_off.go) has no
// such hook and never reads the variable.
const crashEnv = "MAILSYNC_TEST_CRASH_AT"

func testHooks(log zerolog.Logger) mailbox.Hooks {
	var hooks mailbox.Hooks
	if step := os.Getenv(crashEnv); step != "" {
		log.Warn().Str("step", step).Msg(crashEnv + " set: this process kills itself at that step")
		hooks.At = func(s string) error {
			if s == step {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			return nil
		}
	}
	return hooks
}

// Profiles of a benchmark's daemon: MAILSYNC_TEST_CPUPROFILE names a file
// the CPU profile of the whole run goes to, MAILSYNC_TEST_HEAPPROFILE one
// for the heap profile at the end, at the highest heap seen (<file>.peak:
// checked every second, written again when it grew by a tenth) and every
// 30 seconds (<file>.<seconds since the start>). Test builds only.
const (
	cpuProfileEnv  = "MAILSYNC_TEST_CPUPROFILE"
	heapProfileEnv = "MAILSYNC_TEST_HEAPPROFILE"
)

// testProfiles starts the profiles asked for and returns what ends them.
func testProfiles() func() {
	var cpu *os.File
	if p := os.Getenv(cpuProfileEnv); p != "" {
		if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
			cpu = f
		}
	}
	heap := os.Getenv(heapProfileEnv)
	writeHeap := func(path string) {
		if f, err := os.Create(path); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if heap == "" {
			return
		}
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var peak uint64
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if n%30 == 0 {
				writeHeap(heap + "." + strconv.Itoa(n))
			}
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peak+peak/10 {
				peak = v
				writeHeap(heap + ".peak")
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		if cpu != nil {
			pprof.StopCPUProfile()
			cpu.Close()
		}
		if heap != "" {
			writeHeap(heap)
		}
	}
}
