package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
	"github.com/dmsnap/dmsnap/snapstore"
)

func init() { register(statusCmd) }

func statusCmd(e *env) *cobra.Command {
	var check bool
	c := &cobra.Command{
		Use:               "status [NAME|DEVICE|FILE]",
		Annotations:       map[string]string{annoReadsState: "yes"},
		Short:             "show the activated devices, their stacks and sessions",
		Long:              statusHelp,
		Args:              argsBetween(0, 1, "status takes at most one NAME, DEVICE or FILE"),
		ValidArgsFunction: completeDevices(e),
		RunE:              func(c *cobra.Command, args []string) error { return runStatus(e, args, check) },
	}
	c.Flags().BoolVar(&check, "check", false, "for monitoring: exit 7 when something needs a person (a store retention cannot keep at min-free, a dropped snapshot, an issue)")
	return c
}

const statusHelp = `Shows each activated device (or only NAME): its stack, where it is mounted,
its live session and COW use, the store's free space, the sessions flagged
invalid, and anything that needs attention.

--json prints {"devices": [...]}, each device:
  {"name": "sdb1", "path": "/dev/sdb1", "state": "active",
   "identity": {"dev": "8:17", "size": 1073741824, "fs_type": "ext4", "fs_uuid": "..."},
   "chunk_size": 4096, "prealloc": 268435456, "store": "/snapshot", "activated": "RFC 3339",
   "stack": {"origin": "/dev/mapper/dmsnap-sdb1", "origin_dev": "253:1",
             "complete": true, "openers": 0, "needs_repair": false},   (null: no stack)
   "mounted_on": ["/mnt"],
   "image": {"file": "/srv/image.img", "loop": "/dev/loop0",   only for an image file: the
             "bypass": "..."},                                   loop device dmsnap bound, and
                                                                 what a file cannot prevent
   "sessions": [{"n": 4, "dir": "...", "state": "armed", "armed": ..., "mounted": ...,
                 "unmounted": ..., "invalid_reason": "...", "error": "...",
                 "snapshot": {"state": "active", "cow_used_bytes": 65536,
                              "cow_size_bytes": 67239936, "metadata_bytes": 8192},
                 "cow_direct_io": true,         the loop device over cow.img takes direct I/O
                                                (a COW of which nothing is mapped)
                 "cow_tail_write_through": true, the rest of a mapped COW goes to cow.tail
                                                through a write-through loop device
                 "cow_fast_bytes": 268435456,   bytes of cow.img the kernel writes straight
                                                to the store's block device, not through its
                                                filesystem (dmsnap-NAME-cowN; see activate
                                                --prealloc)
                 "cow_segments": 2,              targets of dmsnap-NAME-cowN: runs of cow.img
                                                mapped so or not (each costs a flush per
                                                exception commit)
                 "cow_unmapped_reason": "...",  why nothing is mapped so, when nothing is
                                                (a store on tmpfs or btrfs; a kernel that
                                                refuses write opens of mounted devices)
                 "label": "...", "pinned": true}],  the live session's (label-next)
                                               (null snapshot: none in the kernel)
   "store_space": {"free_bytes": 1, "total_bytes": 2},   (null: store unreadable)
   "invalid_sessions": ["sdb1_1700000000"],   finished sessions flagged invalid
   "restore_points": 3,                       states before a session it can be put back to
   "oldest_restore_point": "sdb1_1699990000", the furthest back (left out when none)
   "retention": {"keep_last": 10, "keep_within": 86400000000000, "keep_daily": 7,
                 "min_free": 1073741824},    the policy (null: keep every session;
                                              keep_within in nanoseconds)
   "retention_short": "...",                  why it cannot keep min-free now
   "on_unmount": "revert",                    keep, or revert (activate --on-unmount)
   "revert_base": 7,                          revert: each revert puts back the state
                                              before session 7 (by sequence number)
   "revert_pending": true,                    revert: mounted since, or its revert not started
   "unrestorable_sessions": 2,                finished sessions an invalid or damaged later
                                              one keeps from being restored to
   "error": "last failed step",
   "todo": ["convert sdb1 session 3", ...],   what the watcher still has to do
   "issues": ["...", ...]}                     what needs a person

--check, for monitoring, exits 7 (after the usual output) when something
needs a person: a store below its device's --min-free that retention cannot
make room in (labelled, pinned or live sessions in the way), a snapshot the
kernel dropped, a failed step, an issue.

Exit codes: 0 ok, 1 failure, 2 usage, 7 --check found a problem.
`

type statusJSON struct {
	Devices []deviceJSON `json:"devices"`
}

type deviceJSON struct {
	Name            string              `json:"name"`
	Path            string              `json:"path"`
	State           session.DeviceState `json:"state"`
	Identity        session.Identity    `json:"identity"`
	ChunkSize       uint32              `json:"chunk_size"`
	Prealloc        int64               `json:"prealloc"`
	Store           string              `json:"store"`
	Activated       *time.Time          `json:"activated,omitempty"`
	Stack           *stackJSON          `json:"stack"`
	MountedOn       []string            `json:"mounted_on"`
	Sessions        []liveSessionJSON   `json:"sessions"`
	StoreSpace      *session.Space      `json:"store_space"`
	InvalidSessions []string            `json:"invalid_sessions"`
	// RestorePoints is how many states before a session the device can
	// still be put back to; OldestRestorePoint the furthest back ("" when
	// none); Unrestorable how many finished sessions can no longer be
	// restored to (an invalid or damaged session after them).
	RestorePoints      int                 `json:"restore_points"`
	OldestRestorePoint string              `json:"oldest_restore_point,omitempty"`
	Unrestorable       int                 `json:"unrestorable_sessions"`
	Error              string              `json:"error,omitempty"`
	Todo               []string            `json:"todo"`
	Issues             []string            `json:"issues"`
	Views              []rollback.ViewInfo `json:"views,omitempty"` // open views (dmsnap sessions open)
	Merge              *rollback.MergeInfo `json:"merge,omitempty"` // an instant restore running (restore --merge)
	Image              *imageJSON          `json:"image,omitempty"` // the device is an image file
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

// imageJSON is what status says of an activated image file.
type imageJSON struct {
	File   string `json:"file"`
	Loop   string `json:"loop,omitempty"` // the loop device under the stack ("" when there is none)
	Bypass string `json:"bypass"`         // what protecting a file cannot prevent
}

type stackJSON struct {
	Origin      string `json:"origin"`
	OriginDev   string `json:"origin_dev"`
	Complete    bool   `json:"complete"`
	Openers     int    `json:"openers"`
	NeedsRepair bool   `json:"needs_repair"`
}

type liveSessionJSON struct {
	N             int                  `json:"n"`
	Dir           string               `json:"dir"`
	State         session.SessionState `json:"state"`
	Armed         *time.Time           `json:"armed,omitempty"`
	Mounted       *time.Time           `json:"mounted,omitempty"`
	Unmounted     *time.Time           `json:"unmounted,omitempty"`
	InvalidReason string               `json:"invalid_reason,omitempty"`
	Error         string               `json:"error,omitempty"`
	Snapshot      *snapshotJSON        `json:"snapshot"`
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

type snapshotJSON struct {
	State         session.SnapshotState `json:"state"`
	CowUsedBytes  uint64                `json:"cow_used_bytes"`
	CowSizeBytes  uint64                `json:"cow_size_bytes"`
	MetadataBytes uint64                `json:"metadata_bytes"`
}

func describeDevice(st session.DeviceStatus) deviceJSON {
	d := st.Device
	out := deviceJSON{
		Name: d.Name, Path: d.Path, State: d.State, Identity: d.Identity, ChunkSize: d.ChunkSize, Prealloc: d.Prealloc,
		Store: d.Store, Activated: timeOrNil(d.Activated), Error: d.Error,
		MountedOn: []string{}, Sessions: []liveSessionJSON{}, InvalidSessions: []string{},
		Todo: []string{}, Issues: []string{},
	}
	if d.Identity.Image {
		out.Image = &imageJSON{File: d.Path, Bypass: session.ImageBypass(d.Name)}
		if st.Stack != nil && st.Stack.HasReal {
			if loops, err := (system.Images{}).Loops(context.Background(), d.Path); err == nil {
				for _, l := range loops {
					if l.Dev == st.Stack.RawDev {
						out.Image.Loop = l.Path
					}
				}
			}
		}
	}
	if s := st.Stack; s != nil {
		out.Stack = &stackJSON{Origin: system.OriginPath(d.Name), OriginDev: s.OriginDev.String(),
			Complete: s.Complete(), Openers: s.OriginOpen, NeedsRepair: s.NeedsRepair}
	}
	for _, m := range st.Mounts {
		out.MountedOn = append(out.MountedOn, m.MountPoint)
	}
	for _, s := range d.Sessions {
		ls := liveSessionJSON{N: s.N, Dir: s.Dir, State: s.State, Armed: timeOrNil(s.Armed), Mounted: timeOrNil(s.Mounted),
			Unmounted: timeOrNil(s.Unmounted), InvalidReason: s.InvalidReason, Error: s.Error}
		if s.Dir != "" {
			if state, err := snapstore.ReadState(s.Dir); err == nil {
				ls.Label, ls.Pinned = state.Label, state.Pinned
			}
		}
		if st.Stack != nil {
			if snap, ok := st.Stack.Snapshot(s.N); ok {
				ls.Snapshot = &snapshotJSON{State: snap.State, CowUsedBytes: snap.Allocated * session.SectorSize,
					CowSizeBytes: snap.Total * session.SectorSize, MetadataBytes: snap.Metadata * session.SectorSize}
				c := system.InspectCOW(d.Name, s.N, s.Dir)
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

// checkProblems lists what status --check fails on for one device.
func checkProblems(d deviceJSON) []string {
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

func runStatus(e *env, args []string, check bool) error {
	sts, err := newManager(e).Status(e.ctx)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	out := statusJSON{Devices: []deviceJSON{}}
	name := ""
	if len(args) == 1 {
		name = e.deviceName(args[0])
	}
	for _, st := range sts {
		if name != "" && st.Device.Name != name && st.Device.Path != args[0] {
			continue
		}
		d := describeDevice(st)
		d.Views = rollback.ViewsOf(rollbackConfig(e), d.Name)
		d.Merge = rollback.MergeOf(e.ctx, e.state, d.Name)
		out.Devices = append(out.Devices, d)
	}
	if len(args) == 1 && len(out.Devices) == 0 {
		return fmt.Errorf("%s: %w; `dmsnap status` lists the activated devices", args[0], session.ErrNotActivated)
	}
	var problems []string
	for _, d := range out.Devices {
		problems = append(problems, checkProblems(d)...)
	}
	if e.json {
		if err := e.emit(out, nil); err != nil || !check || len(problems) == 0 {
			return err
		}
	} else {
		if len(out.Devices) == 0 {
			fmt.Fprintln(e.stdout, "no device is activated")
		}
		for i, d := range out.Devices {
			if i > 0 {
				fmt.Fprintln(e.stdout)
			}
			printDevice(e, d)
		}
	}
	if check && len(problems) > 0 {
		return fmt.Errorf("%w: %s", errCheck, strings.Join(problems, "; "))
	}
	return nil
}

func printDevice(e *env, d deviceJSON) {
	w := e.stdout
	fmt.Fprintf(w, "%s (%s): %s\n", d.Name, d.Path, d.State)
	if d.Stack == nil {
		fmt.Fprintln(w, "  stack:    none in the kernel (`dmsnap attach "+d.Path+"` rebuilds it)")
	} else {
		state := "complete"
		if !d.Stack.Complete {
			state = "INCOMPLETE"
		}
		if d.Stack.NeedsRepair {
			state += ", needs repair"
		}
		fmt.Fprintf(w, "  stack:    %s (%s) %s\n", d.Stack.Origin, d.Stack.OriginDev, state)
	}
	if im := d.Image; im != nil {
		on := "no loop device now"
		if im.Loop != "" {
			on = "on " + im.Loop + ", which dmsnap bound and which goes with the stack"
		}
		fmt.Fprintf(w, "  image:    file %s, %s\n", im.File, on)
		fmt.Fprintf(w, "  note:     %s\n", im.Bypass)
	}
	if len(d.MountedOn) > 0 {
		fmt.Fprintf(w, "  mounted:  %v\n", d.MountedOn)
	} else {
		fmt.Fprintln(w, "  mounted:  no")
	}
	for _, s := range d.Sessions {
		fmt.Fprintf(w, "  session %d: %s, %s\n", s.N, s.State, s.Dir)
		if s.Label != "" || s.Pinned {
			pin := ""
			if s.Pinned {
				pin = " (pinned)"
			}
			fmt.Fprintf(w, "    label: %q%s\n", s.Label, pin)
		}
		if s.Snapshot != nil {
			dio := ""
			if s.CowDirectIO != nil {
				dio = map[bool]string{true: ", COW direct I/O", false: ", COW buffered I/O"}[*s.CowDirectIO]
			}
			fmt.Fprintf(w, "    snapshot %s, COW %s used of %s%s\n", s.Snapshot.State,
				units.FormatBytes(s.Snapshot.CowUsedBytes), units.FormatBytes(s.Snapshot.CowSizeBytes), dio)
			switch {
			case s.CowFastBytes == nil:
			case *s.CowFastBytes > 0:
				fmt.Fprintf(w, "    COW: %s of it goes straight to %s (cow.img, immutable), the rest to cow.tail through its filesystem (%d segments)\n",
					units.FormatBytes(*s.CowFastBytes), routeText(s.CowRoute), s.CowSegments)
				if s.CowHeadroom != nil {
					fmt.Fprintf(w, "    headroom: %s of pre-images before they spill to cow.tail (the watcher maps more as they come)\n", units.FormatBytes(*s.CowHeadroom))
				}
			case s.CowUnmapped != "":
				fmt.Fprintf(w, "    COW: through the store's filesystem (%s)\n", s.CowUnmapped)
			default:
				fmt.Fprintln(w, "    COW: through the store's filesystem")
			}
		}
		if s.InvalidReason != "" {
			fmt.Fprintf(w, "    INVALID: %s\n", s.InvalidReason)
		}
		if s.Error != "" {
			fmt.Fprintf(w, "    error: %s\n", s.Error)
		}
	}
	if d.Retention != nil {
		fmt.Fprintf(w, "  retain:   %s\n", d.Retention)
	}
	if d.RetentionShort != "" {
		fmt.Fprintf(w, "  ATTENTION: %s\n", d.RetentionShort)
	}
	if d.OnUnmount == session.OnUnmountRevert {
		pending := ""
		if d.RevertPending {
			pending = "; a revert is to come (mounted since, or not started yet)"
		}
		fmt.Fprintf(w, "  on unmount: revert, to the state before session %d%s\n", d.RevertBase, pending)
	}
	if d.StoreSpace != nil {
		fmt.Fprintf(w, "  store:    %s, %s free of %s\n", d.Store, units.FormatBytes(d.StoreSpace.FreeBytes), units.FormatBytes(d.StoreSpace.TotalBytes))
	}
	if d.Merge != nil {
		fmt.Fprintf(w, "  merge:    %s\n", mergeText(d.Merge))
	}
	for _, v := range d.Views {
		fmt.Fprintf(w, "  view:     %s\n", viewText(v))
	}
	switch {
	case d.RestorePoints > 0:
		fmt.Fprintf(w, "  restore:  %d restore point(s), back to the state before %s\n", d.RestorePoints, d.OldestRestorePoint)
	default:
		fmt.Fprintln(w, "  restore:  no restore point yet (one appears when the armed session closes)")
	}
	for _, id := range d.InvalidSessions {
		fmt.Fprintf(w, "  INVALID session %s: the kernel dropped its snapshot (store full or I/O error); its pre-images are incomplete\n", id)
	}
	if d.Unrestorable > 0 {
		fmt.Fprintf(w, "  LOST:     %d finished session(s) can no longer be restored to: an invalid or damaged session after them breaks the chain (dmsnap sessions list %s)\n", d.Unrestorable, d.Name)
	}
	if d.Error != "" {
		fmt.Fprintf(w, "  error:    %s\n", d.Error)
	}
	for _, t := range d.Todo {
		fmt.Fprintf(w, "  pending:  %s (dmsnap watch does it)\n", t)
	}
	for _, is := range d.Issues {
		fmt.Fprintf(w, "  ATTENTION: %s\n", is)
	}
}

// headroom is how many more bytes the exception store can allocate before
// it passes the end of the COW's mapped part, used bytes allocated.
func headroom(fastEnd, used uint64) uint64 {
	if used >= fastEnd {
		return 0
	}
	return fastEnd - used
}

// routeText says where a COW's mapped part goes (status).
func routeText(route string) string {
	switch route {
	case system.RouteBelow:
		return "the devices below the store's device-mapper device (no loop device)"
	case system.RouteLoop:
		return "the store's device through a loop device"
	}
	return "the store's device"
}
