// Package restore turns a device's sessions back into the state it had
// before one of them: it plans which pre-image wins for every byte
// (a streaming k-way merge of the sessions' sorted maps, oldest session
// wins), verifies every record the plan uses before anything is written,
// writes the plan in sector order in large coalesced writes, reports
// progress, and decides from probed facts whether a restore may start at all
// (preflight).
//
// The planner, the verify and write passes and preflight do no I/O of their
// own on the session store or the kernel: they see sessions through the
// small Session interface, the target through io.WriterAt, and the device's
// state through the Device interface of preflight. So every rule here is
// tested on the host without root; the kernel-facing parts are package
// rollback's. Two places do open files themselves. StoreSession, the
// adapter over a snapstore.Session (snapsource.go, read_store.go), opens
// that session's blocks.dat and blocks.crc by name, to map blocks.dat and
// read it in file order for speed. And the destination of `restore --to`
// (target.go) is stat'ed and opened here, since it must be checked against
// what the restore reads by the kernel's numbers; the rule is
// CheckImageTarget, a pure function over injected stat and loop lookups.
//
// Memory grows with the number of sessions, never with the number of
// records: planning keeps one record per session, applying one write buffer
// and one record buffer per session. The write pass maps each session's
// blocks.dat (package internal/mmapio): its pages count in the process's
// resident size, but they are the page cache's, clean, and the kernel takes
// them back when it needs the memory.
package restore
