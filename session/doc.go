// Package session owns dmsnap's orchestration state: the registry of
// activated devices in the state directory, the lock that serialises every
// state change, the naming of session directories, the session life cycle
// (armed → open → closing → closed / invalid) as a persisted state machine,
// the reconcile that finishes whatever a crash or a reboot interrupted, the
// mount watcher's building blocks (a mountinfo parser, a poll(2)-based
// waiter and a differ), and keeping the udev rule that re-attaches devices
// at boot in step with the registry (internal/hostfiles renders it).
//
// It must not talk to device-mapper, loop devices or session files itself.
// The kernel side is the Kernel interface (package dm implements the real
// one), the on-disk side is the Store interface (package snapstore), and the
// raw device probe is the Prober interface; the orchestration here is pure
// enough to be unit-tested against fakes (package session/sessiontest).
//
// The life cycle follows containerd's devmapper snapshotter
// (device_info.go, pool_device.go): the intended state is written to the
// registry before an operation and the outcome after it, and Plan, a pure
// function of the registry and of what the kernel, the mount table and the
// store show, computes what is left to do. Every operation of the Manager is
// "record the intent, then reconcile", so the normal path and the recovery
// path after a crash are the same code.
package session
