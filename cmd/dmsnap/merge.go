package main

import (
	"fmt"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/rollback"
)

// Instant restores: package rollback starts them (restore --merge),
// session/merge.go holds their life cycle and system.Merges the kernel side.

// mergeText is an instant restore's line in status.
func mergeText(mj *rollback.MergeInfo) string {
	switch {
	case mj.Failed:
		return fmt.Sprintf("to the state before %s: MERGE FAILED (kernel log); the store %s is kept", mj.Session, mj.COW)
	case mj.Done:
		return fmt.Sprintf("to the state before %s: copied back; dmsnap watch puts the stack back", mj.Session)
	case mj.RemainingBytes != nil:
		return fmt.Sprintf("to the state before %s: %s left to copy back (the device shows the restored state already)", mj.Session, units.FormatBytes(*mj.RemainingBytes))
	}
	return fmt.Sprintf("to the state before %s: recorded, but the origin is not merging (dmsnap watch cleans it up)", mj.Session)
}
