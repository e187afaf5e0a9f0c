// Package dm is dmsnap's kernel-facing layer: device-mapper ioctls, loop
// devices and the device nodes that go with them, and the dmsnap stack built
// from them (linear "-real", snapshot-origin, one snapshot per session).
//
// It owns every ioctl dmsnap issues. It does not shell out (no dmsetup, no
// losetup), knows nothing of sessions, stores or on-disk session formats, and
// never writes to a raw device beyond the first 4 KiB of a new COW store.
//
// Layout, following anatol/devmapper.go: one file per target type, each a
// value with a pure table builder (linear.go, snapshot_origin.go, snapshot.go,
// snapshot_merge.go); ioctl.go holds the pure encoders and decoders of ioctl
// buffers, control.go runs them against /dev/mapper/control. Create, remove,
// suspend, resume, info, list and version go through
// github.com/anatol/devmapper.go; every table load, table status and table
// clear goes through this package's own ioctl code, so each operation has
// exactly one code path.
//
// Session logic (package session) drives the kernel through the Kernel
// interface; System is the real implementation, dm/dmtest provides an
// in-memory fake with the same behaviour for tests that need no root.
//
// All sizes and offsets in this package are in 512-byte sectors unless a name
// says otherwise.
package dm
