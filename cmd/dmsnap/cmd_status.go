package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
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

// deviceJSON is a device in status: what session/system reports of it
// (system.DeviceReport), and its views and instant restore (rollback).
type deviceJSON struct {
	system.DeviceReport
	Views []rollback.ViewInfo `json:"views,omitempty"` // open views (dmsnap sessions open)
	Merge *rollback.MergeInfo `json:"merge,omitempty"` // an instant restore running (restore --merge)
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
		d := deviceJSON{DeviceReport: system.Describe(st)}
		d.Views = rollback.ViewsOf(rollbackConfig(e), d.Name)
		d.Merge = rollback.MergeOf(e.ctx, e.state, d.Name)
		out.Devices = append(out.Devices, d)
	}
	if len(args) == 1 && len(out.Devices) == 0 {
		return fmt.Errorf("%s: %w; `dmsnap status` lists the activated devices", args[0], session.ErrNotActivated)
	}
	var problems []string
	for _, d := range out.Devices {
		problems = append(problems, d.Problems()...)
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
		printLiveSession(w, s)
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

// printLiveSession writes a live session's lines of status.
func printLiveSession(w io.Writer, s system.LiveSession) {
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
