package session

// CrashpointEnv names the environment variable that arms a crash point, for
// the crash tests: with DMSNAP_CRASHPOINT=NAME the process SIGKILLs itself
// the first time it reaches the point NAME, and with NAME#K the K-th time
// (a restore closes a session before it writes and another after). Unset,
// every crash point is a no-op that costs one atomic load.
//
// Only a test build honours it: crash points are compiled in with the build
// tag crashpoints (make build-test: bin/dmsnap-test, which the VM tests
// install as /usr/bin/dmsnap). In a release build Crashpoint is an empty
// function and the variable is never read, so nobody can make a released
// dmsnap kill itself mid-restore through its environment.
//
// The points are the steps of the session life cycle, reached right after
// the step's outcome is on disk (see Crashpoints): a SIGKILL there is the
// worst moment for the next step, which must then be finished by the
// reconcile of the next start, exactly as after a power cut.
const CrashpointEnv = "DMSNAP_CRASHPOINT"

// Crash points besides the step kinds (ActionKind values, reached after the
// step succeeded): the middle of ActOpen, each conversion step
// (CrashpointConvert + snapstore's step name, reached after that step), and
// the steps of instant restores, views, prune and passwd.
const (
	CrashpointOpenMarked = "open:marked" // registry says opening; the store directory not renamed yet
	CrashpointConvert    = "convert:"    // + snapstore.Step* (begin, map-files, map, data, punch, meta, cleanup)

	CrashpointMergeRecorded = "merge:recorded" // merges.json says starting; the merge table not loaded yet
	CrashpointMergeLoaded   = "merge:loaded"   // the kernel merges; merges.json still says starting
	CrashpointMergeRunning  = "merge:running"  // merges.json says merging
	CrashpointMergeEnded    = "merge:ended"    // snapshot-origin back; the store and the record still there
	CrashpointMergeRemoved  = "merge:removed"  // the store removed; the record still there

	CrashpointViewRecorded = "view:recorded" // views.json says opening; nothing stacked yet
	CrashpointViewStacked  = "view:stacked"  // the view device is up; views.json still says opening
	CrashpointViewDropped  = "view:dropped"  // the view's device and COW gone; its record still there

	CrashpointPrune  = "prune:"     // + moved, logged, removed (snapstore.PruneSession's steps)
	CrashpointPasswd = "passwd:set" // the new password hash written
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
