package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
)

// Instant restores: package rollback starts them (restore --merge),
// session/merge.go holds their life cycle and system.Merges the kernel side.

// finishMerges is the watcher's beat for instant restores.
func finishMerges(ctx context.Context, m *session.Manager, log *slog.Logger) {
	outs, err := m.FinishMerges(ctx, system.Merges{})
	for _, o := range outs {
		switch {
		case o.Problem != "":
			log.Error("instant restore needs attention", "device", o.Merge.Device, "problem", o.Problem)
		case o.Finished && o.Undo != "":
			log.Info("instant restore finished", "device", o.Merge.Device, "restored_before", o.Merge.Session,
				"undo", "dmsnap restore "+o.Merge.Device+" --session "+o.Undo)
		case o.Finished:
			log.Info("instant restore finished", "device", o.Merge.Device, "restored_before", o.Merge.Session)
		}
	}
	if err != nil && ctx.Err() == nil {
		log.Error("instant restore", "err", err)
	}
}

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
