//go:build crashpoints

package session

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// CrashpointsBuilt: this is a test build, whose crash points work.
const CrashpointsBuilt = true

// crashpoint is the armed point, parsed once from the environment.
var crashpoint struct {
	once  sync.Once
	name  string // "" : none armed
	nth   int64  // kill at this arrival (1: the first)
	count atomic.Int64
}

// Crashpoint kills the process with SIGKILL when name is the armed crash
// point (CrashpointEnv) and this is the arrival asked for; otherwise it
// does nothing.
func Crashpoint(name string) {
	crashpoint.once.Do(func() {
		v := os.Getenv(CrashpointEnv)
		n := int64(1)
		if i := strings.LastIndexByte(v, '#'); i >= 0 {
			k, err := strconv.ParseInt(v[i+1:], 10, 64)
			if err != nil || k < 1 {
				return // malformed: arm nothing rather than guess
			}
			v, n = v[:i], k
		}
		crashpoint.name, crashpoint.nth = v, n
	})
	if crashpoint.name == "" || crashpoint.name != name {
		return
	}
	if crashpoint.count.Add(1) != crashpoint.nth {
		return
	}
	os.Stderr.WriteString("dmsnap: crash point " + name + " reached: SIGKILL (" + CrashpointEnv + ")\n")
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
