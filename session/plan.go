package session

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Observed is what Plan is given besides the registry: what the kernel, the
// mount table and the stores show at one moment (Manager.Observe gathers it).
type Observed struct {
	Now     time.Time
	Stacks  map[string]StackInfo   // by dmsnap name
	Mounts  map[DevNum][]MountInfo // mounted devices
	Raw     map[string]RawDevice   // by dmsnap name, for devices whose stack is not complete
	Pending []PendingSession       // unfinished session directories in the stores
	// Learnt: the identity of the device under a complete stack, for
	// registered devices recorded without a stable identity.
	Learnt map[string]Identity
}

// RawDevice is the raw device of a registered device as found now.
type RawDevice struct {
	Path     string   // where it was found
	Identity Identity // as found (its number may differ from the registry's)
	Problem  string   // why it cannot be used ("" when found and matching)
}

// ActionKind names a reconcile step.
type ActionKind string

// The steps. Each is idempotent when applied (Manager.Apply): repeating one
// a crash interrupted finishes it.
const (
	ActNoteOrigin     ActionKind = "note-origin"     // registry: remember dmsnap-NAME's device number (Dev)
	ActNoteIdentity   ActionKind = "note-identity"   // registry: record the device's stable identity (Identity)
	ActStackUp        ActionKind = "stack-up"        // kernel: build -real and origin over Path
	ActStackDown      ActionKind = "stack-down"      // kernel: remove the (half-built or deactivated) stack
	ActNewSession     ActionKind = "new-session"     // registry: session N, arming, armed at At
	ActRelocate       ActionKind = "relocate"        // registry: session N's directory is now Dir
	ActArm            ActionKind = "arm"             // store: create session N's directory and COW
	ActAttach         ActionKind = "attach"          // kernel: snapshot N over session N's COW
	ActMarkArmed      ActionKind = "mark-armed"      // registry: session N armed
	ActOpen           ActionKind = "open"            // registry+store: session N mounted at At (rename)
	ActClose          ActionKind = "close"           // registry: session N closing (unmounted at At)
	ActInvalidate     ActionKind = "invalidate"      // registry: session N invalid (Reason)
	ActRemoveSnapshot ActionKind = "remove-snapshot" // kernel: remove snapshot N
	ActConvert        ActionKind = "convert"         // store: record the close, convert session N
	ActDiscard        ActionKind = "discard"         // store: remove session N's never-used directory
	ActForgetSession  ActionKind = "forget-session"  // registry: session N is done
	ActMarkActive     ActionKind = "mark-active"     // registry: activation finished
	ActForgetDevice   ActionKind = "forget-device"   // registry: deactivation finished
	ActRepair         ActionKind = "repair"          // kernel: finish an interrupted stack operation
	ActRemoveStack    ActionKind = "remove-stack"    // kernel: a stack no registered device owns
	ActDiscardDir     ActionKind = "discard-dir"     // store: an orphan directory whose COW was never used
	ActCloseDir       ActionKind = "close-dir"       // store: an orphan directory left armed/open: mark closing
	ActConvertDir     ActionKind = "convert-dir"     // store: convert an orphan directory
)

// Action is one reconcile step. Device is the dmsnap name (for stacks not in
// the registry too); Session the session number when the step is about one.
type Action struct {
	Kind    ActionKind
	Device  string
	Session int
	Dir     string    // relocate: the new directory; *-dir: the orphan directory
	Path    string    // stack-up: the raw device path
	Dev     DevNum    // stack-up: the raw device's number now; note-origin: the origin's
	At      time.Time // new-session: armed; open: mounted; close: unmounted (zero: not mounted)
	FSType  string    // open
	Reason  string    // why; for invalidate, the reason recorded
	// Identity: note-identity, the identity read from the device.
	Identity *Identity
	// Image: stack-up, Path is an image file, to be put on a loop device
	// first (Images.Bind).
	Image bool
}

func (a Action) String() string {
	var b strings.Builder
	b.WriteString(string(a.Kind))
	if a.Device != "" {
		b.WriteString(" " + a.Device)
	}
	if a.Session > 0 {
		fmt.Fprintf(&b, " session %d", a.Session)
	}
	if a.Dir != "" {
		b.WriteString(" " + a.Dir)
	}
	if a.Reason != "" {
		b.WriteString(" (" + a.Reason + ")")
	}
	return b.String()
}

// Issue is something reconcile cannot fix by itself; it is reported, and
// looked at again on the next reconcile.
type Issue struct {
	Device  string
	Session int
	Dir     string
	Problem string
}

func (i Issue) String() string {
	s := i.Device
	if i.Session > 0 {
		s += fmt.Sprintf(" session %d", i.Session)
	}
	if i.Dir != "" {
		s += " " + i.Dir
	}
	if s != "" {
		s += ": "
	}
	return s + i.Problem
}

// Plan computes what reconcile has to do to bring the kernel and the stores
// in line with the registry, in the order it has to be done. It is a pure
// function: the same registry and observation always give the same plan,
// and once a plan has been applied, planning again gives nothing to do.
//
// Per device, the order keeps a session armed at every moment:
//
//  1. relocate session directories renamed by a crash-interrupted mount;
//     flag sessions whose snapshot the kernel invalidated;
//  2. repair the stack after an interrupted operation; rebuild it when it
//     is gone or half-built (boot, crash) and the raw device is present,
//     unmounted and the one that was activated;
//  3. close the open session when the device is no longer mounted;
//  4. make sure the live session is armed — the current one re-attached
//     with its COW, or a new one created, armed and attached — and opened
//     when the device is mounted;
//  5. only then end the closing sessions: remove their snapshot, convert,
//     forget them;
//  6. finish an interrupted activation or deactivation.
//
// Then stacks no registered device owns are removed, and session
// directories no registered session owns are finished (converted) or, when
// their COW was never used, discarded.
func Plan(reg *Registry, obs Observed) ([]Action, []Issue) {
	var acts []Action
	var issues []Issue
	for _, d := range reg.Devices {
		a, is := PlanDevice(d, obs)
		acts = append(acts, a...)
		issues = append(issues, is...)
	}
	a, is := PlanOrphans(reg, obs)
	return append(acts, a...), append(issues, is...)
}

// PlanDevice is Plan for one registered device.
func PlanDevice(d *Device, obs Observed) ([]Action, []Issue) {
	p := devicePlanner{d: d, obs: obs, state: map[int]SessionState{}, dir: map[int]string{}}
	p.plan()
	return p.acts, p.issues
}

type devicePlanner struct {
	d      *Device
	obs    Observed
	acts   []Action
	issues []Issue

	stack    StackInfo
	hasStack bool
	snaps    map[int]SnapshotInfo // live snapshots, as they will be after the planned steps
	state    map[int]SessionState // session states after the planned steps
	dir      map[int]string       // session directories after the planned steps
}

func (p *devicePlanner) add(a Action) {
	a.Device = p.d.Name
	p.acts = append(p.acts, a)
}

func (p *devicePlanner) issue(session int, format string, args ...any) {
	p.issues = append(p.issues, Issue{Device: p.d.Name, Session: session, Problem: fmt.Sprintf(format, args...)})
}

func (p *devicePlanner) plan() {
	d, obs := p.d, p.obs
	p.stack, p.hasStack = obs.Stacks[d.Name]
	p.snaps = map[int]SnapshotInfo{}
	if p.hasStack {
		for _, s := range p.stack.Snapshots {
			p.snaps[s.N] = s
		}
	}
	for _, s := range d.Sessions {
		p.state[s.N] = s.State
		p.dir[s.N] = s.Dir
	}

	// 1. Directories renamed behind the registry's back; invalidated snapshots.
	for _, s := range d.Sessions {
		if ps, ok := pendingByArmed(obs.Pending, d.Name, s.Armed); ok && ps.Dir != s.Dir {
			p.add(Action{Kind: ActRelocate, Session: s.N, Dir: ps.Dir, Reason: "directory renamed"})
			p.dir[s.N] = ps.Dir
		}
	}
	for _, s := range d.Sessions {
		if sn, ok := p.snaps[s.N]; ok && sn.State == SnapshotInvalid && s.State != SessionInvalid {
			p.add(Action{Kind: ActInvalidate, Session: s.N,
				Reason: "the kernel invalidated the snapshot (COW full or I/O error); pre-images after that are missing"})
			p.state[s.N] = SessionInvalid
		}
	}
	if p.hasStack && p.stack.HasOrigin && p.stack.OriginDev != d.Origin {
		p.add(Action{Kind: ActNoteOrigin, Dev: p.stack.OriginDev})
	}
	if id, ok := obs.Learnt[d.Name]; ok && d.Identity.Stable == nil {
		p.add(Action{Kind: ActNoteIdentity, Identity: &id, Reason: "recorded without a stable identity"})
	}

	if d.State == DeviceDeactivating {
		p.planDeactivate()
		return
	}

	// 2. The stack.
	kernelOK := p.hasStack && p.stack.Complete()
	if kernelOK && !p.stack.RawDev.IsZero() && p.stack.RawDev != d.Identity.Dev {
		p.issue(0, "dmsnap-%s maps device %s, but %s was activated as %s: not touching it; deactivate and activate again",
			d.Name, p.stack.RawDev, d.Path, d.Identity.Dev)
		return
	}
	if kernelOK && p.stack.NeedsRepair {
		p.add(Action{Kind: ActRepair, Reason: "an interrupted stack operation (suspended device, inactive table)"})
	}
	if !kernelOK {
		raw, ok := obs.Raw[d.Name]
		switch {
		case !ok:
			p.issue(0, "the device is not present; protection resumes when it appears (`dmsnap attach`)")
		case raw.Problem != "":
			p.issue(0, "%s", raw.Problem)
		case len(obs.Mounts[raw.Identity.Dev]) > 0:
			p.issue(0, "%s is mounted directly on %s, bypassing dmsnap: unmount it, then run `dmsnap attach %s`",
				raw.Path, mountPoints(obs.Mounts[raw.Identity.Dev]), raw.Path)
		default:
			if p.hasStack {
				p.add(Action{Kind: ActStackDown, Reason: "half-built stack"})
			}
			p.add(Action{Kind: ActStackUp, Path: raw.Path, Dev: raw.Identity.Dev, Image: raw.Identity.Image})
			p.snaps = map[int]SnapshotInfo{}
			kernelOK = true
		}
	}
	originMounts := []MountInfo(nil)
	if kernelOK && p.hasStack && p.stack.Complete() {
		originMounts = obs.Mounts[p.stack.OriginDev]
	}
	mounted := len(originMounts) > 0

	// 3. Close the session of a mount that ended.
	cur := p.current()
	if cur != nil && (p.state[cur.N] == SessionOpen || p.state[cur.N] == SessionOpening) && !mounted {
		p.add(Action{Kind: ActClose, Session: cur.N, At: obs.Now, Reason: "device unmounted"})
		p.state[cur.N] = SessionClosing
		cur = nil
	}

	// 4. The live session.
	if kernelOK {
		n := 0
		if cur == nil {
			n = d.NextSession
			p.add(Action{Kind: ActNewSession, Session: n, At: obs.Now})
			p.add(Action{Kind: ActArm, Session: n})
			p.add(Action{Kind: ActAttach, Session: n})
			p.add(Action{Kind: ActMarkArmed, Session: n})
			p.state[n] = SessionArmed
		} else {
			n = cur.N
			_, live := p.snaps[n]
			if p.state[n] == SessionArming {
				if p.dir[n] == "" {
					p.add(Action{Kind: ActArm, Session: n})
				}
				if !live {
					p.add(Action{Kind: ActAttach, Session: n})
				}
				p.add(Action{Kind: ActMarkArmed, Session: n})
				p.state[n] = SessionArmed
			} else if !live {
				p.add(Action{Kind: ActAttach, Session: n, Reason: "snapshot missing (reboot?): re-attaching its COW"})
			}
		}
		if mounted {
			switch p.state[n] {
			case SessionArmed:
				p.add(Action{Kind: ActOpen, Session: n, At: obs.Now, FSType: originMounts[0].FSType})
			case SessionOpening:
				p.add(Action{Kind: ActOpen, Session: n, At: cur.Mounted, FSType: cur.FSType})
			}
		}
	}

	// 5. End the sessions being closed.
	p.planEnding()
	p.planStraySnapshots()

	// 6.
	if d.State == DeviceActivating && kernelOK {
		p.add(Action{Kind: ActMarkActive})
	}
}

// current returns the live session after the planned steps, or nil.
func (p *devicePlanner) current() *Session {
	for _, s := range p.d.Sessions {
		if p.state[s.N].Live() {
			return s
		}
	}
	return nil
}

// planEnding removes, converts and forgets every session being closed.
func (p *devicePlanner) planEnding() {
	for _, s := range p.d.Sessions {
		if !p.state[s.N].Ending() {
			continue
		}
		if _, live := p.snaps[s.N]; live {
			p.add(Action{Kind: ActRemoveSnapshot, Session: s.N})
			delete(p.snaps, s.N)
		}
		p.endDir(s)
	}
}

// endDir finishes the directory of an ending session: converted when it may
// hold pre-images, discarded when it never did, then forgotten.
func (p *devicePlanner) endDir(s *Session) {
	dir := p.dir[s.N]
	ps, pending := pendingByDir(p.obs.Pending, dir)
	switch {
	case dir == "":
		// Never got a directory: nothing on disk.
	case pending && !ps.COWUsed && s.Mounted.IsZero() && ps.Phase == SessionArmed:
		p.add(Action{Kind: ActDiscard, Session: s.N, Reason: "COW never used"})
	default:
		p.add(Action{Kind: ActConvert, Session: s.N})
	}
	p.add(Action{Kind: ActForgetSession, Session: s.N})
}

// planStraySnapshots removes snapshot devices of this stack that no session
// in the registry owns.
func (p *devicePlanner) planStraySnapshots() {
	var stray []int
	for n := range p.snaps {
		if _, ok := p.state[n]; !ok {
			stray = append(stray, n)
		}
	}
	slices.Sort(stray)
	for _, n := range stray {
		p.add(Action{Kind: ActRemoveSnapshot, Session: n, Reason: "no such session in the registry"})
	}
}

func (p *devicePlanner) planDeactivate() {
	d, obs := p.d, p.obs
	if p.hasStack && p.stack.HasOrigin && len(obs.Mounts[p.stack.OriginDev]) > 0 {
		p.issue(0, "cannot deactivate: %s is mounted on %s; unmount it and retry",
			"/dev/mapper/dmsnap-"+d.Name, mountPoints(obs.Mounts[p.stack.OriginDev]))
		return
	}
	if cur := p.current(); cur != nil {
		at := time.Time{}
		if p.state[cur.N] == SessionOpen || p.state[cur.N] == SessionOpening {
			at = obs.Now
		}
		p.add(Action{Kind: ActClose, Session: cur.N, At: at, Reason: "deactivating"})
		p.state[cur.N] = SessionClosing
	}
	if p.hasStack {
		// Teardown removes the snapshots with the rest; the COW files stay.
		p.add(Action{Kind: ActStackDown, Reason: "deactivating"})
		p.snaps = map[int]SnapshotInfo{}
	}
	for _, s := range d.Sessions {
		p.endDir(s)
	}
	p.add(Action{Kind: ActForgetDevice})
}

// PlanOrphans plans the removal of stacks no registered device owns and the
// completion of session directories no registered session owns.
func PlanOrphans(reg *Registry, obs Observed) ([]Action, []Issue) {
	var acts []Action
	var issues []Issue
	var names []string
	for name := range obs.Stacks {
		if reg.Device(name) == nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		st := obs.Stacks[name]
		switch {
		case len(st.Snapshots) > 0:
			// A live session: another state directory's device, or one whose
			// registry was lost. Removing it would end its protection, and
			// its session directory would then look like an orphan to
			// convert while the other state directory still arms it.
			issues = append(issues, Issue{Device: name, Problem: fmt.Sprintf(
				"stack dmsnap-%s has a live session but is not in this state directory's registry: it belongs to another --state, or its registry was lost; left alone (`dmsnap activate` of its device adopts it, `dmsnap deactivate %s` takes it down)", name, name)})
			continue
		case st.HasOrigin && (len(obs.Mounts[st.OriginDev]) > 0 || st.OriginOpen > 0):
			issues = append(issues, Issue{Device: name, Problem: fmt.Sprintf(
				"stack dmsnap-%s is in use but not in the registry; unmount it and dmsnap removes it (its device is then unprotected until activated again)", name)})
			continue
		}
		acts = append(acts, Action{Kind: ActRemoveStack, Device: name, Reason: "not in the registry, and no session"})
	}

	pend := slices.Clone(obs.Pending)
	slices.SortFunc(pend, func(a, b PendingSession) int { return strings.Compare(a.Dir, b.Dir) })
	for _, ps := range pend {
		if ownedBy(reg, ps) {
			continue
		}
		switch {
		case len(ps.Users) > 0:
			// Converting it would rename, punch and unpin a file the kernel
			// writes pre-images into.
			issues = append(issues, Issue{Device: ps.Name, Dir: ps.Dir, Problem: fmt.Sprintf(
				"no session of this state directory owns it, but the kernel still uses its COW (%s): it belongs to another --state, or to a registry that was lost; not touched (activating the device again adopts its stack)",
				strings.Join(ps.Users, "; "))})
		case (ps.Phase == SessionArmed || ps.Phase == SessionOpen) && !ps.COWUsed:
			acts = append(acts, Action{Kind: ActDiscardDir, Device: ps.Name, Dir: ps.Dir, Reason: "left by an interrupted arming; COW never used"})
		case ps.Phase == SessionArmed || ps.Phase == SessionOpen:
			acts = append(acts,
				Action{Kind: ActCloseDir, Device: ps.Name, Dir: ps.Dir, Reason: "no registered session owns it"},
				Action{Kind: ActConvertDir, Device: ps.Name, Dir: ps.Dir})
		default:
			acts = append(acts, Action{Kind: ActConvertDir, Device: ps.Name, Dir: ps.Dir, Reason: "interrupted conversion"})
		}
	}
	return acts, issues
}

// ownedBy reports whether a registered session owns the directory: by path,
// or by device name and arming time (a directory renamed at mount).
func ownedBy(reg *Registry, ps PendingSession) bool {
	for _, d := range reg.Devices {
		for _, s := range d.Sessions {
			if s.Dir == ps.Dir || (d.Name == ps.Name && s.Armed.Equal(ps.Armed)) {
				return true
			}
		}
	}
	return false
}

func pendingByArmed(pend []PendingSession, name string, armed time.Time) (PendingSession, bool) {
	if armed.IsZero() {
		return PendingSession{}, false
	}
	for _, ps := range pend {
		if ps.Name == name && ps.Armed.Equal(armed) {
			return ps, true
		}
	}
	return PendingSession{}, false
}

func pendingByDir(pend []PendingSession, dir string) (PendingSession, bool) {
	for _, ps := range pend {
		if ps.Dir == dir {
			return ps, true
		}
	}
	return PendingSession{}, false
}

func mountPoints(ms []MountInfo) string {
	var pts []string
	for _, m := range ms {
		pts = append(pts, m.MountPoint)
	}
	return strings.Join(pts, ", ")
}
