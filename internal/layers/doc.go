// Package layers holds no code: its test checks that the module's packages
// import only downwards, in the order docs/architecture.md ("Packages")
// gives: cmd/dmsnap → rollback → (restore, session, session/system) →
// (dm, snapstore) → internal/*.
package layers
