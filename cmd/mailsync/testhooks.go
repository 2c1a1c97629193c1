//go:build mailsync_testhooks

package main

import (
	"os"
	"runtime/pprof"
	"syscall"

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
// for the heap profile at its end (after SIGTERM). Test builds only.
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
	return func() {
		if cpu != nil {
			pprof.StopCPUProfile()
			cpu.Close()
		}
		if p := os.Getenv(heapProfileEnv); p != "" {
			if f, err := os.Create(p); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}
}
