package dm

import (
	"errors"
	"fmt"
	"strings"
)

// Views: a read-only device showing the device as it was before a session
// is a snapshot target over -real whose COW holds the restore plan's
// pre-images (package rollback writes it). The origin must be reloaded
// with each one added or removed, since snapshot-origin tracks its
// snapshots.

// AddView adds the snapshot target name (dmsnap-NAME-PART, its UUID
// DMSNAP-NAME-PART: session.ViewDMName makes PART at<secs>) over -real
// (real) with COW device cow, in the kernel's order (as AddSnapshot adds a
// session's snapshot): create and load the view, reload the origin,
// suspend the origin, resume the view, resume the origin. Failures undo
// what was done.
func (s Stack) AddView(name string, real BlockDevice, cow Dev, chunkSectors uint32) error {
	origin := s.OriginName()
	part, ok := strings.CutPrefix(name, Prefix+s.Name+"-")
	if !ok {
		return fmt.Errorf("view %s: not a name of the stack %s", name, s.Name)
	}
	if _, err := Create(name, s.uuid(part)); err != nil {
		return err
	}
	rm := func() { Remove(name) }
	if err := Load(name, Snapshot{Length: real.Sectors, Origin: real.Dev, COW: cow, ChunkSectors: chunkSectors}); err != nil {
		rm()
		return err
	}
	if err := Load(origin, SnapshotOrigin{Length: real.Sectors, Origin: real.Dev}); err != nil {
		rm()
		return err
	}
	if err := Suspend(origin); err != nil {
		ClearTable(origin)
		rm()
		return err
	}
	if err := Resume(name); err != nil {
		rm()
		if rerr := Resume(origin); rerr != nil {
			return errors.Join(err, fmt.Errorf("%s is left suspended: dmsetup resume %s: %w", s.OriginPath(), origin, rerr))
		}
		return err
	}
	if err := Resume(origin); err != nil {
		if Resume(origin) != nil {
			return fmt.Errorf("%s is left suspended and all I/O to it blocks (dmsetup resume %s): %w", s.OriginPath(), origin, err)
		}
	}
	return nil
}

// RemoveView removes the view device name with the origin suspended (none
// to suspend when the stack is gone); a view still open is refused.
func (s Stack) RemoveView(name string) error {
	info, err := Info(name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.OpenCount > 0 {
		return fmt.Errorf("%s is open (%d openers): unmount it first", MapperPath(name), info.OpenCount)
	}
	origin := s.OriginName()
	if _, err := Info(origin); errors.Is(err, ErrNotFound) {
		return Remove(name)
	} else if err != nil {
		return err
	}
	if err := Suspend(origin); err != nil {
		return err
	}
	rerr := Remove(name)
	if err := Resume(origin); err != nil && Resume(origin) != nil {
		return errors.Join(rerr, fmt.Errorf("%s is left suspended (dmsetup resume %s): %w", s.OriginPath(), origin, err))
	}
	return rerr
}

// ViewStatus is the snapshot status of view device name.
func ViewStatus(name string) (SnapshotStatus, error) {
	sts, err := Status(name)
	if err != nil {
		return SnapshotStatus{}, err
	}
	if len(sts) != 1 {
		return SnapshotStatus{}, fmt.Errorf("%s: %d targets", name, len(sts))
	}
	return ParseSnapshotStatus(sts[0].Params)
}
