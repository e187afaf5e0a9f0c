package system

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// DeviceReport is what `dmsnap status` says of a device (its JSON is the
// status command's): the registry's record, the stack and the live
// sessions as the kernel shows them, the store's space and its finished
// sessions, what reconcile would do and what needs attention.
type DeviceReport struct {
	Name            string              `json:"name"`
	Path            string              `json:"path"`
	State           session.DeviceState `json:"state"`
	Identity        session.Identity    `json:"identity"`
	ChunkSize       uint32              `json:"chunk_size"`
	Prealloc        int64               `json:"prealloc"`
	Store           string              `json:"store"`
	Activated       *time.Time          `json:"activated,omitempty"`
	Stack           *StackReport        `json:"stack"`
	MountedOn       []string            `json:"mounted_on"`
	Sessions        []LiveSession       `json:"sessions"`
	StoreSpace      *session.Space      `json:"store_space"`
	InvalidSessions []string            `json:"invalid_sessions"`
	// RestorePoints is how many states before a session the device can
	// still be put back to; OldestRestorePoint the furthest back ("" when
	// none); Unrestorable how many finished sessions can no longer be
	// restored to (an invalid or damaged session after them).
	RestorePoints      int          `json:"restore_points"`
	OldestRestorePoint string       `json:"oldest_restore_point,omitempty"`
	Unrestorable       int          `json:"unrestorable_sessions"`
	Error              string       `json:"error,omitempty"`
	Todo               []string     `json:"todo"`
	Issues             []string     `json:"issues"`
	Image              *ImageReport `json:"image,omitempty"` // the device is an image file
	// Retention is the device's policy (null: keep every session);
	// RetentionShort says why it cannot keep the store's min-free now.
	Retention      *snapstore.Retention `json:"retention"`
	RetentionShort string               `json:"retention_short,omitempty"`
	// OnUnmount is "keep" or "revert"; a device that reverts says the
	// session whose start is the state put back, and whether a revert is
	// still to come (the device is mounted, or its revert has not started).
	OnUnmount     string `json:"on_unmount"`
	RevertBase    int    `json:"revert_base,omitempty"`
	RevertPending bool   `json:"revert_pending,omitempty"`
}

// ImageReport is what status says of an activated image file.
type ImageReport struct {
	File   string `json:"file"`
	Loop   string `json:"loop,omitempty"` // the loop device under the stack ("" when there is none)
	Bypass string `json:"bypass"`         // what protecting a file cannot prevent
}

// StackReport is the device's stack in the kernel.
type StackReport struct {
	Origin      string `json:"origin"`
	OriginDev   string `json:"origin_dev"`
	Complete    bool   `json:"complete"`
	Openers     int    `json:"openers"`
	NeedsRepair bool   `json:"needs_repair"`
}

// LiveSession is a session of the registry, with its snapshot and COW.
type LiveSession struct {
	N             int                  `json:"n"`
	Dir           string               `json:"dir"`
	State         session.SessionState `json:"state"`
	Armed         *time.Time           `json:"armed,omitempty"`
	Mounted       *time.Time           `json:"mounted,omitempty"`
	Unmounted     *time.Time           `json:"unmounted,omitempty"`
	InvalidReason string               `json:"invalid_reason,omitempty"`
	Error         string               `json:"error,omitempty"`
	Snapshot      *SnapshotReport      `json:"snapshot"`
	CowDirectIO   *bool                `json:"cow_direct_io,omitempty"`
	CowTailWT     *bool                `json:"cow_tail_write_through,omitempty"`
	CowFastBytes  *uint64              `json:"cow_fast_bytes,omitempty"`
	CowSegments   int                  `json:"cow_segments,omitempty"`
	CowRoute      string               `json:"cow_route,omitempty"`
	CowHeadroom   *uint64              `json:"cow_fast_headroom_bytes,omitempty"`
	CowUnmapped   string               `json:"cow_unmapped_reason,omitempty"`
	Label         string               `json:"label,omitempty"` // label-next
	Pinned        bool                 `json:"pinned,omitempty"`
}

// SnapshotReport is a live session's snapshot target.
type SnapshotReport struct {
	State         session.SnapshotState `json:"state"`
	CowUsedBytes  uint64                `json:"cow_used_bytes"`
	CowSizeBytes  uint64                `json:"cow_size_bytes"`
	MetadataBytes uint64                `json:"metadata_bytes"`
}

// Describe reports the device of st (Manager.Status), reading its
// store and the kernel's view of its COW.
func Describe(st session.DeviceStatus) DeviceReport {
	d := st.Device
	out := DeviceReport{
		Name: d.Name, Path: d.Path, State: d.State, Identity: d.Identity, ChunkSize: d.ChunkSize, Prealloc: d.Prealloc,
		Store: d.Store, Activated: timeOrNil(d.Activated), Error: d.Error,
		MountedOn: []string{}, Sessions: []LiveSession{}, InvalidSessions: []string{},
		Todo: []string{}, Issues: []string{},
	}
	if d.Identity.Image {
		out.Image = &ImageReport{File: d.Path, Bypass: session.ImageBypass(d.Name)}
		if st.Stack != nil && st.Stack.HasReal {
			if loops, err := (Images{}).Loops(context.Background(), d.Path); err == nil {
				for _, l := range loops {
					if l.Dev == st.Stack.RawDev {
						out.Image.Loop = l.Path
					}
				}
			}
		}
	}
	if s := st.Stack; s != nil {
		out.Stack = &StackReport{Origin: OriginPath(d.Name), OriginDev: s.OriginDev.String(),
			Complete: s.Complete(), Openers: s.OriginOpen, NeedsRepair: s.NeedsRepair}
	}
	for _, m := range st.Mounts {
		out.MountedOn = append(out.MountedOn, m.MountPoint)
	}
	for _, s := range d.Sessions {
		ls := LiveSession{N: s.N, Dir: s.Dir, State: s.State, Armed: timeOrNil(s.Armed), Mounted: timeOrNil(s.Mounted),
			Unmounted: timeOrNil(s.Unmounted), InvalidReason: s.InvalidReason, Error: s.Error}
		if s.Dir != "" {
			if state, err := snapstore.ReadState(s.Dir); err == nil {
				ls.Label, ls.Pinned = state.Label, state.Pinned
			}
		}
		if st.Stack != nil {
			if snap, ok := st.Stack.Snapshot(s.N); ok {
				ls.Snapshot = &SnapshotReport{State: snap.State, CowUsedBytes: snap.Allocated * session.SectorSize,
					CowSizeBytes: snap.Total * session.SectorSize, MetadataBytes: snap.Metadata * session.SectorSize}
				c := InspectCOW(d.Name, s.N, s.Dir)
				ls.CowDirectIO, ls.CowTailWT, ls.CowFastBytes, ls.CowSegments, ls.CowUnmapped = c.DirectIO, c.TailWriteThrough, c.FastBytes, c.Segments, c.Unmapped
				if c.FastBytes != nil && *c.FastBytes > 0 {
					h := headroom(c.FastEnd, ls.Snapshot.CowUsedBytes)
					ls.CowRoute, ls.CowHeadroom = c.Route, &h
				}
			}
		}
		out.Sessions = append(out.Sessions, ls)
	}
	if sp, err := session.StoreSpace(d.Store); err == nil {
		out.StoreSpace = &sp
	} else {
		out.Issues = append(out.Issues, fmt.Sprintf("store %s: %v", d.Store, err))
	}
	if infos, err := snapstore.ListSessions(d.Store); err == nil {
		var mine []snapstore.SessionInfo
		for _, info := range infos {
			if info.Name != d.Name {
				continue
			}
			mine = append(mine, info)
			if info.Status == snapstore.StatusInvalid {
				out.InvalidSessions = append(out.InvalidSessions, info.ID)
			}
		}
		pts := snapstore.RestorePoints(mine)
		out.RestorePoints = snapstore.CountRestorable(pts)
		if i := snapstore.OldestRestorable(pts); i >= 0 {
			out.OldestRestorePoint = mine[i].ID
		}
		for i, p := range pts {
			if !p.OK && mine[i].Status != snapstore.StatusIncomplete {
				out.Unrestorable++
			}
		}
	}
	out.OnUnmount = d.OnUnmountMode()
	if d.Reverts() {
		out.RevertBase, out.RevertPending = d.RevertBase, d.RevertPending
	}
	if r := d.Retention; r != nil {
		out.Retention = r
		if out.StoreSpace != nil && r.MinFree > int64(out.StoreSpace.FreeBytes) {
			out.RetentionShort = retentionShort(d, r.MinFree-int64(out.StoreSpace.FreeBytes))
		}
	}
	for _, a := range st.Todo {
		out.Todo = append(out.Todo, a.String())
	}
	for _, is := range st.Issues {
		out.Issues = append(out.Issues, is.String())
	}
	return out
}

// retentionShort says why device d's retention cannot make up the need
// bytes its store is short of min-free ("" when it can: the watcher will).
func retentionShort(d *session.Device, need int64) string {
	infos, err := snapstore.ListSessions(d.Store)
	if err != nil {
		return err.Error()
	}
	held := map[string]bool{}
	for _, s := range d.Sessions {
		if s.Dir != "" {
			held[filepath.Clean(s.Dir)] = true
		}
	}
	restores, err := snapstore.RestoresOf(d.Store, d.Name)
	if err != nil {
		return err.Error()
	}
	plan := snapstore.PlanRetention(infos, snapstore.RetentionRequest{Name: d.Name, Policy: *d.Retention, Now: time.Now(), Need: need, Size: session.SessionBytes, Held: held, Restores: restores, KeepFrom: d.RevertBase})
	return plan.Short
}

// Problems lists what `status --check` fails on for d.
func (d DeviceReport) Problems() []string {
	var out []string
	if d.RetentionShort != "" {
		out = append(out, d.Name+": "+d.RetentionShort)
	}
	for _, s := range d.Sessions {
		if s.Snapshot != nil && s.Snapshot.State == session.SnapshotInvalid {
			out = append(out, fmt.Sprintf("%s: the kernel dropped the snapshot of session %d", d.Name, s.N))
		}
	}
	if d.Error != "" {
		out = append(out, d.Name+": "+d.Error)
	}
	for _, is := range d.Issues {
		out = append(out, d.Name+": "+is)
	}
	return out
}

// headroom is how many more bytes the exception store can allocate before
// it passes the end of the COW's mapped part, used bytes allocated.
func headroom(fastEnd, used uint64) uint64 {
	if used >= fastEnd {
		return 0
	}
	return fastEnd - used
}

// timeOrNil is t in UTC, nil when zero (omitted from JSON).
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}
