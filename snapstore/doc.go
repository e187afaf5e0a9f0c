// Package snapstore owns dmsnap's on-disk data: the kernel's persistent
// exception store (the COW file a session's snapshot writes, cow.img), the
// session layout inherited from the seed (blocks.dat, blocks.map, meta.json)
// with dmsnap's integrity sidecar (blocks.crc), the small state file of a
// session that is not converted yet (state.json), the conversion of the one
// into the other, and the readers and verifiers of finished sessions.
//
// FORMAT.md beside this file is the specification; the constants and structs
// here mirror it. The package reads and writes files only: it never talks to
// the kernel, never mounts, never touches a block device other than through an
// io.ReaderAt it is given. Device-mapper lives in package dm, the session state
// machine in package session, restore planning in package restore.
//
// Everything that parses bytes from disk takes an io.Reader or io.ReaderAt and
// reports damage as a *FormatError naming the file, the byte offset and the
// record, so a caller can tell the user exactly what is broken.
package snapstore
