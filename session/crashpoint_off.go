//go:build !crashpoints

package session

// CrashpointsBuilt: this is a release build, without crash points.
const CrashpointsBuilt = false

// Crashpoint does nothing in a release build: DMSNAP_CRASHPOINT is not
// even read (see CrashpointEnv). Empty, it is inlined away.
func Crashpoint(name string) {}
