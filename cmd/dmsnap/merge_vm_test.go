//go:build vm

package main

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
)

// copyThrottle is dm-snapshot's kcopyd throttle (percent of the time its
// copies may run); a low value slows the merge so the test can stop the
// watcher while it is half done.
const copyThrottle = "/sys/module/dm_snapshot/parameters/snapshot_copy_throttle"

func setThrottle(t *testing.T, v string) {
	t.Helper()
	if err := os.WriteFile(copyThrottle, []byte(v), 0o644); err != nil {
		t.Fatalf("%s: %v", copyThrottle, err)
	}
}

var mergeUndoRE = regexp.MustCompile(`undo="dmsnap restore \S+ --session (\S+)"`)

// TestMergeRestore: `restore --merge` shows the pre-session state at once,
// the merge outlives a killed watcher, the next watcher puts the stack back
// when the kernel is done, and the session armed for the merge undoes it.
func TestMergeRestore(t *testing.T) {
	d := newVMDev(t)
	stack := dm.Stack{Name: d.name}
	before := hash(t, d.origin)
	first := d.session()
	d.session()
	// A session with 24 MiB of new data, so that the merge takes a while.
	if err := unix.Mount(d.origin, d.mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := d.m.Reconcile(d.ctx); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 24<<20)
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(d.mnt, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	if err := unix.Unmount(d.mnt, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.m.Reconcile(d.ctx); err != nil {
		t.Fatal(err)
	}
	after := hash(t, d.origin)

	throttle, err := os.ReadFile(copyThrottle)
	if err != nil {
		t.Fatal(err)
	}
	setThrottle(t, "1")
	t.Cleanup(func() { setThrottle(t, string(throttle)) })
	code, out, _ := d.restoreSplit(d.name, "--session", first, "--merge", "--yes", "--json")
	if code != 0 {
		t.Fatalf("restore --merge: exit %d: %s", code, out)
	}
	var res rollback.Result
	if err := decodeResult(out, &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.Merge == nil || !res.Merge.Started || !res.Undoable || res.Merge.FallbackReason != "" {
		t.Fatalf("restore --merge did not merge: %s", out)
	}
	// At once, the origin shows the state before the first session.
	if got := hash(t, d.origin); got != before {
		t.Fatalf("origin right after restore --merge: %s, want %s", got, before)
	}
	if merging, err := stack.Merging(); err != nil || !merging {
		t.Fatalf("origin not merging after restore --merge: %v %v", merging, err)
	}
	var sout, serr strings.Builder
	if code := run(d.ctx, []string{"--store", d.store, "--state", d.state, "status", d.name}, strings.NewReader(""), &sout, &serr); code != 0 ||
		!strings.Contains(sout.String(), "merge:    to the state before "+first) {
		t.Fatalf("status during the merge: exit %d:\n%s%s", code, sout.String(), serr.String())
	}
	t.Logf("status during the merge:\n%s", sout.String())
	// A second merge, or deactivating, is refused while this one runs.
	reg, err := d.m.Registry()
	if err != nil {
		t.Fatal(err)
	}
	recording := reg.Device(d.name).Current()
	if recording == nil || recording.N != res.Merge.Recording {
		t.Fatalf("armed session %+v, the restore said %d records the merge", recording, res.Merge.Recording)
	}
	for _, args := range [][]string{{"--merge"}, {}} {
		if code, out := d.restore(append([]string{d.name, "--session", first, "--yes"}, args...)...); code != exitBusy || !strings.Contains(out, "still merging") {
			t.Fatalf("restore %v during a merge: exit %d: %s", args, code, out)
		}
	}
	if code, out := d.views("open", first); code != exitBusy || !strings.Contains(out, "still merging") {
		t.Fatalf("view during a merge: exit %d: %s", code, out)
	}
	if err := d.m.Deactivate(d.ctx, d.name); err == nil || !strings.Contains(err.Error(), "snapshot-merge") {
		t.Fatalf("deactivate during a merge: %v", err)
	}

	// The watcher sees the merge running; killed meanwhile, it leaves it
	// running and recorded.
	c := &cli{state: d.state, store: d.store}
	w := c.watch(t)
	eventually(t, "the watcher to see the merge", 30*time.Second, func() bool { return strings.Contains(w.log.String(), "msg=merging") })
	w.kill(t)
	st, merging, err := stack.MergeStatus()
	if err != nil || !merging || st.MergeDone() {
		t.Fatalf("after killing the watcher: merging %v, %s, %v (the merge ended too soon to test a restart)", merging, st, err)
	}
	t.Logf("watcher killed with %d sectors still to merge", st.DataSectors())
	if ms, err := session.LoadMerges(d.state); err != nil || len(ms) != 1 {
		t.Fatalf("merges after the kill: %+v, %v", ms, err)
	}
	if got := hash(t, d.origin); got != before {
		t.Fatalf("origin mid-merge: %s, want %s", got, before)
	}

	// A reboot mid-merge brings the stack back as snapshot-origin:
	// dropping the merge table does the same. dmsnap attach (udev runs it
	// at boot) resumes the merge at once from what is left in the store.
	if err := stack.EndMerge(true); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := c.try(t, "", "attach", d.raw); code != 0 || !strings.Contains(errOut, "resumed it") {
		t.Fatalf("dmsnap attach after the merge table was dropped: exit %d, it did not say it resumed the merge:\n%s", code, errOut)
	}
	if merging, err := stack.Merging(); err != nil || !merging {
		t.Fatalf("after dmsnap attach: merging %v, %v", merging, err)
	}
	if got := hash(t, d.origin); got != before {
		t.Fatalf("origin after the resumed merge: %s, want %s", got, before)
	}

	// A new watcher finishes it once the kernel is done.
	setThrottle(t, string(throttle))
	w = c.watch(t)
	eventually(t, "the merge to finish", 120*time.Second, func() bool {
		ms, err := session.LoadMerges(d.state)
		return err == nil && len(ms) == 0
	})
	if merging, err := stack.Merging(); err != nil || merging {
		t.Fatalf("origin still merging after the watcher finished it: %v", err)
	}
	tbl, err := dm.Table(stack.OriginName())
	if err != nil || len(tbl) != 1 || tbl[0].Type != "snapshot-origin" {
		t.Fatalf("origin table after the merge: %v %v", tbl, err)
	}
	if got := hash(t, d.origin); got != before {
		t.Fatalf("origin after the merge: %s, want %s", got, before)
	}
	if got := hash(t, d.raw); got != before {
		t.Fatalf("raw device after the merge: %s, want %s", got, before)
	}
	if cows, _ := filepath.Glob(filepath.Join(d.state, "merges", "*")); len(cows) != 0 {
		t.Errorf("merge stores left: %v", cows)
	}
	loops, err := dm.BoundLoops()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range loops {
		if strings.Contains(l.Backing, filepath.Join(d.state, "merges")) {
			t.Errorf("loop %s of the merge store left: %s", l.Path, l.Backing)
		}
	}
	var m []string
	eventually(t, "the watcher to name the undo session", 30*time.Second, func() bool {
		m = mergeUndoRE.FindStringSubmatch(w.log.String())
		return m != nil
	})
	w.stop(t)
	reg, err = d.m.Registry()
	if err != nil {
		t.Fatal(err)
	}
	if cur := reg.Device(d.name).Current(); cur == nil || cur.State != session.SessionArmed {
		t.Fatalf("no armed session after the merge: %+v", cur)
	}
	vmtest.Run(t, "e2fsck", "-fn", d.origin)

	// The session armed for the merge recorded what it overwrote:
	// restoring it undoes the instant restore.
	d.mustRestore(d.name, "--session", m[1], "--yes")
	if got := hash(t, d.origin); got != after {
		t.Fatalf("after undoing the merge restore (session %s): %s, want %s", m[1], got, after)
	}

	// A kernel that refuses the snapshot-merge table: the normal restore
	// runs instead, says so, and is undoable as usual.
	rollback.LoadMergeTable = func(s dm.Stack, _ string, _ uint32) error {
		return &dm.Error{Op: "load table", Device: s.OriginName(), Err: unix.EINVAL}
	}
	t.Cleanup(func() {
		rollback.LoadMergeTable = func(s dm.Stack, cow string, c uint32) error { return s.StartMerge(cow, c) }
	})
	code, out, errOut := d.restoreSplit(d.name, "--session", first, "--merge", "--yes", "--json")
	if code != 0 {
		t.Fatalf("restore --merge, refused: exit %d: %s", code, out)
	}
	res = rollback.Result{}
	if err := decodeResult(out, &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.Merge == nil || res.Merge.Started || !strings.Contains(res.Merge.FallbackReason, "refused") || !res.Undoable || res.Undo == "" ||
		!strings.Contains(errOut, "no instant restore") {
		t.Fatalf("refused merge did not fall back to a normal restore: %s", out)
	}
	if got := hash(t, d.origin); got != before {
		t.Fatalf("after the fallback restore: %s, want %s", got, before)
	}
	if merging, err := stack.Merging(); err != nil || merging {
		t.Fatalf("merging after a refused merge: %v", err)
	}
	if ms, _ := session.LoadMerges(d.state); len(ms) != 0 {
		t.Fatalf("merge records after a refused merge: %+v", ms)
	}
}
