package testenv

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ProcessCPU is the CPU time (user and system) process pid has used so
// far; with children, also that of the children it has reaped. A
// benchmark reads it before and after a phase to tell which process spent
// the machine's time. 0 when the process is gone.
func ProcessCPU(pid int, children bool) time.Duration {
	f := procStat(pid)
	if f == nil {
		return 0
	}
	fields := []int{11, 12} // utime, stime (after the state field)
	if children {
		fields = append(fields, 13, 14) // cutime, cstime
	}
	var ticks int
	for _, i := range fields {
		v, _ := strconv.Atoi(f[i])
		ticks += v
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// GroupCPU is ProcessCPU of a process group's leader with its reaped
// children, plus that of the group's live members: a Dovecot master and
// its service processes.
func GroupCPU(pgid int) time.Duration {
	total := ProcessCPU(pgid, true)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == pgid {
			continue
		}
		if f := procStat(pid); f != nil && f[2] == strconv.Itoa(pgid) {
			total += ProcessCPU(pid, false)
		}
	}
	return total
}

// procStat is /proc/<pid>/stat's fields after the command name: [0] is the
// state, [2] the process group.
func procStat(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return nil
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 15 {
		return nil
	}
	return f
}
