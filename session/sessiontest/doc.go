// Package sessiontest provides fakes of the session package's Kernel,
// Store and Prober and a settable mount table, sharing one world (System),
// so the session life cycle can be tested without root, device-mapper or
// snapstore.
//
// The fakes keep the rules that matter to the orchestration: names are
// unique, a mounted device cannot be stacked or torn down, a snapshot can
// only be attached to a complete stack, attaching initialises the COW file
// as the kernel does (its first bytes become "SnAp"), a COW file still
// attached cannot be converted, and a used COW cannot be discarded. Every
// mutating call is logged (System.Calls) and can be made to crash
// (System.CrashBefore, System.CrashAfter): the fake panics with Crash, as if
// the process died there, leaving the world as it was at that instant.
//
// The store fake works on a real directory, so renames, session names and
// the registry's paths are real; its files are small stand-ins (state.json,
// cow.img of 4 KiB, meta.json) and not snapstore's format.
package sessiontest
