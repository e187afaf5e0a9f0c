// Package rollback puts a device under dmsnap back to its state before a
// session: the undoable restore through the origin (recorded by a session,
// so that it can be undone in turn), the direct restore of a device that is
// not activated, --no-undo through -real, the image written to a file
// (--to), the dry run, views (a read-only device of the state before a
// session) and the instant restore (snapshot-merge).
//
// It owns the sequence of each: resolving the device and its store,
// checking the target (restore points, restores.log, unfinished sessions),
// planning and verifying the chain, holding the device, rotating the live
// session around the write, recording views and merges before the kernel
// sees them. It reads the plan from package restore, sessions from
// snapstore, and changes the stack through session.Manager (sessions) and
// Kernel (views and merges; DM over device-mapper, a fake in the host
// tests). Config.OriginPath and Config.Kernel are the seams the host tests
// use, over session/sessiontest's data model.
//
// It must not talk to a terminal or print: the caller (cmd/dmsnap) asks
// the questions, between Restorer.Prepare and Pending.Run, and prints the
// Result. Warnings that do not stop a restore go to Config.Warn.
package rollback
