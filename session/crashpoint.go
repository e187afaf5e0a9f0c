package session

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// CrashpointEnv names the environment variable that arms a crash point, for
// the crash tests: with DMSNAP_CRASHPOINT=NAME the process SIGKILLs itself
// the first time it reaches the point NAME, and with NAME#K the K-th time
// (a restore closes a session before it writes and another after). Unset,
// every crash point is a no-op that costs one atomic load.
//
// The points are the steps of the session life cycle, reached right after
// the step's outcome is on disk (see Crashpoints): a SIGKILL there is the
// worst moment for the next step, which must then be finished by the
// reconcile of the next start, exactly as after a power cut.
const CrashpointEnv = "DMSNAP_CRASHPOINT"

// Crash points besides the step kinds (ActionKind values, reached after the
// step succeeded): the middle of ActOpen, and each conversion step
// (CrashpointConvert + snapstore's step name, reached after that step).
const (
	CrashpointOpenMarked = "open:marked" // registry says opening; the store directory not renamed yet
	CrashpointConvert    = "convert:"    // + snapstore.Step* (begin, map-files, map, data, punch, meta, cleanup)
)

// Crashpoints lists the crash points of the watcher's session life cycle
// in the order one mount → unmount → rotation reaches them. ActionKinds
// not listed are crash points too (stack-up, invalidate, ...), reached on
// other paths.
var Crashpoints = []string{
	CrashpointOpenMarked, string(ActOpen),
	string(ActClose), string(ActNewSession), string(ActArm), string(ActAttach), string(ActMarkArmed),
	string(ActRemoveSnapshot),
	CrashpointConvert + "begin", CrashpointConvert + "map-files", CrashpointConvert + "map",
	CrashpointConvert + "data", CrashpointConvert + "punch", CrashpointConvert + "meta", CrashpointConvert + "cleanup",
	string(ActConvert), string(ActForgetSession),
}

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
