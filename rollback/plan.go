package rollback

import (
	"context"
	"errors"
	"fmt"

	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/snapstore"
)

// plan opens the sessions from target to the newest, runs the preflight
// checks against dev (nil: none) and verifies every session's files.
func (r *Restorer) plan(ctx context.Context, sessions []snapstore.SessionInfo, dev restore.Device) (*restore.Plan, []string, error) {
	chain := sessions
	var infos []restore.SessionInfo
	for _, s := range chain {
		info := restore.SessionInfo{ID: s.ID}
		switch s.Status {
		case snapstore.StatusComplete:
			info.State, info.Verified = snapstore.StatusComplete, true
		case snapstore.StatusUnverified:
			info.State = snapstore.StatusComplete
		case snapstore.StatusInvalid:
			info.State, info.Verified = snapstore.StatusInvalid, true
		case snapstore.StatusIncomplete:
			info.State = snapstore.StatusIncomplete
		case snapstore.StatusUnreadable:
			return nil, nil, unreadable(s.ID, s.Err)
		default:
			return nil, nil, fmt.Errorf("session %s is damaged: %v; nothing was written (dmsnap sessions verify %s tells more)", s.ID, s.Err, s.ID)
		}
		if m := s.Meta; m != nil && m.Dmsnap != nil {
			info.Identity = restore.Identity{Size: uint64(m.Dmsnap.Device.Size), FSUUID: m.Dmsnap.Device.FSUUID}
		}
		infos = append(infos, info)
	}
	var warns []string
	if dev != nil {
		w, err := restore.Preflight(dev, infos, restore.PreflightOptions{})
		if err != nil {
			return nil, nil, err
		}
		warns = append(warns, w...)
		if d, ok := dev.(*probe); ok {
			warns = append(warns, d.warns...)
		}
		if d, ok := dev.(*probe); ok && d.uuid != "" {
			// The UUID only warns: a session records the identity of the
			// device at arming, so a mkfs inside a later session, or a
			// restore across one, legitimately changes it. The size cannot
			// change and is compared strictly.
			for i := len(infos) - 1; i >= 0; i-- {
				if u := infos[i].Identity.FSUUID; u != "" {
					if u != d.uuid {
						warns = append(warns, fmt.Sprintf("%s holds filesystem UUID %s, session %s recorded %s: make sure this is the device the sessions were taken of", d.path, d.uuid, infos[i].ID, u))
					}
					break
				}
			}
		}
	} else {
		for _, info := range infos {
			if info.State != snapstore.StatusComplete {
				return nil, nil, &restore.StateError{Session: info.ID, State: info.State}
			}
		}
	}
	// Every session's files are checked before anything changes: their
	// structure here, then the data of the records the plan uses, read
	// in blocks.dat order (sequential reads; the write pass then finds
	// them in the page cache). A session verified earlier in this run
	// (before the armed session was closed) is not read again.
	var plan, unchecked []restore.Session
	for _, s := range chain {
		check := !r.verified[s.ID]
		if check {
			if _, err := snapstore.VerifyStructure(ctx, s.Dir); err != nil {
				return nil, nil, refusedByVerify(s.ID, err)
			}
		}
		ss, err := snapstore.Open(s.Dir)
		if err != nil {
			return nil, nil, refusedByVerify(s.ID, err)
		}
		r.opened = append(r.opened, ss)
		plan = append(plan, restore.NewStoreSession(ss))
		if check {
			unchecked = append(unchecked, plan[len(plan)-1])
		}
	}
	if len(unchecked) > 0 {
		// A record the whole plan uses from these sessions has no older
		// pre-image in the chain, so a plan of these sessions alone uses
		// it too: checking that plan checks it.
		sub, err := restore.NewPlan(unchecked)
		if err != nil {
			return nil, nil, err
		}
		if err := sub.Verify(ctx, r.cfg.progress()); err != nil {
			if errors.Is(err, snapstore.ErrCannotVerify) {
				return nil, nil, fmt.Errorf("a session could not be read to be checked, so nothing was written: %w; that is an OS error, not damage: fix it and run the restore again", err)
			}
			return nil, nil, fmt.Errorf("session verification failed; nothing was written: %w", err)
		}
		if r.verified == nil {
			r.verified = map[string]bool{}
		}
		for _, s := range unchecked {
			r.verified[s.ID()] = true
		}
	}
	p, err := restore.NewPlan(plan)
	return p, warns, err
}

// refusedByVerify is the error of a restore refused because session id did
// not verify: damaged, or (errors.Is(err, snapstore.ErrCannotVerify)) not
// readable for a reason of the OS, which is not damage.
func refusedByVerify(id string, err error) error {
	var ve *snapstore.VerifyError
	if !errors.As(err, &ve) && errors.Is(err, snapstore.ErrCannotVerify) {
		return unreadable(id, err)
	}
	return fmt.Errorf("session %s failed verification; nothing was written: %w", id, err)
}

// unreadable is the error of a restore refused because the OS would not
// read session id's files (err wraps snapstore.ErrCannotVerify).
func unreadable(id string, err error) error {
	return fmt.Errorf("session %s could not be read to be checked, so nothing was written: %w; that is an OS error, not damage: fix it and run the restore again", id, err)
}
