package rollback_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// fakeKernel is rollback.Kernel over a world of ModelData: -real and the
// origin are the device file; a view is an image file the fake builds from
// -real and the view's COW (read in the kernel's format, as the kernel
// would); a merge writes the merged image over the device file at once,
// which the armed session then records like any other write.
type fakeKernel struct {
	w     *world
	dir   string            // where view images live
	views map[string]string // view device → its image
	// crash panics in the named method, before its effect or after.
	crashBefore, crashAfter string
	refuseMerge             bool
	failMerge               error // StartMerge fails so (not a refusal of the table)
	merged                  int
}

type kernelCrash struct{ where string }

func newFakeKernel(t *testing.T, w *world) *fakeKernel {
	return &fakeKernel{w: w, dir: t.TempDir(), views: map[string]string{}}
}

func (k *fakeKernel) step(name string, effect func() error) error {
	if k.crashBefore == name {
		k.crashBefore = ""
		panic(kernelCrash{"before " + name})
	}
	err := effect()
	if k.crashAfter == name {
		k.crashAfter = ""
		panic(kernelCrash{"after " + name})
	}
	return err
}

func (k *fakeKernel) StackUp(string) (bool, error)             { return true, nil }
func (k *fakeKernel) OriginOpeners(string) (int, error)        { return 0, nil }
func (k *fakeKernel) SnapshotData(string, int) (uint64, error) { return 0, nil }
func (k *fakeKernel) Real(string) (string, int64, error)       { return k.w.dev, devSize, nil }

// apply returns the device as the COW file shows it: -real with each
// exception's chunk taken from the COW.
func (k *fakeKernel) apply(cowFile string) ([]byte, error) {
	img, err := os.ReadFile(k.w.dev)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(cowFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	cow, err := snapstore.OpenCow(f, fi.Size(), cowFile)
	if err != nil {
		return nil, err
	}
	cb := cow.ChunkBytes()
	_, err = cow.Walk(func(e snapstore.CowEntry) error {
		_, err := f.ReadAt(img[int64(e.OldChunk)*cb:min(int64(e.OldChunk+1)*cb, int64(len(img)))], int64(e.NewChunk)*cb)
		return err
	})
	return img, err
}

func (k *fakeKernel) AddView(_, view, cowFile string, _ uint32) error {
	return k.step("AddView", func() error {
		if _, ok := k.views[view]; ok {
			return fmt.Errorf("%s exists", view)
		}
		img, err := k.apply(cowFile)
		if err != nil {
			return err
		}
		path := filepath.Join(k.dir, view+".img")
		k.views[view] = path
		return os.WriteFile(path, img, 0o600)
	})
}

func (k *fakeKernel) RemoveView(_, view, _ string) error {
	return k.step("RemoveView", func() error {
		if path, ok := k.views[view]; ok {
			delete(k.views, view)
			return os.Remove(path)
		}
		return nil
	})
}

func (k *fakeKernel) ViewState(view string) (string, uint64) {
	if _, ok := k.views[view]; ok {
		return "active", 0
	}
	return "gone", 0
}

func (k *fakeKernel) StartMerge(_, cowFile string, _ uint32) error {
	return k.step("StartMerge", func() error {
		if k.refuseMerge {
			return fmt.Errorf("%w: load table: invalid argument", rollback.ErrMergeRefused)
		}
		if k.failMerge != nil {
			return k.failMerge
		}
		img, err := k.apply(cowFile)
		if err != nil {
			return err
		}
		k.merged++
		return os.WriteFile(k.w.dev, img, 0o600)
	})
}

func (w *world) viewConfig(k *fakeKernel) rollback.Config {
	cfg := w.config(nil)
	cfg.Kernel = k
	return cfg
}

// checkView checks the view of id shows want, and is the one view listed.
func checkView(t *testing.T, k *fakeKernel, v session.View, want []byte, what string) {
	t.Helper()
	path, ok := k.views[v.DM]
	if !ok {
		t.Fatalf("%s: no view device %s", what, v.DM)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: the view of %s does not show the device as it was before it", what, v.ID)
	}
	vs := rollback.ViewsOf(k.w.viewConfig(k), "sdb1")
	if len(vs) != 1 || vs[0].ID != v.ID || vs[0].State != "active" || vs[0].Opening {
		t.Fatalf("%s: views: %+v", what, vs)
	}
}

// checkClosed checks nothing is left of any view.
func checkClosed(t *testing.T, k *fakeKernel, what string) {
	t.Helper()
	if len(k.views) != 0 {
		t.Errorf("%s: view devices left: %v", what, k.views)
	}
	if vs := rollback.ViewsOf(k.w.viewConfig(k), "sdb1"); len(vs) != 0 {
		t.Errorf("%s: views recorded: %+v", what, vs)
	}
	if cows, _ := filepath.Glob(filepath.Join(k.w.state, "views", "*")); len(cows) != 0 {
		t.Errorf("%s: files left in the views directory: %v", what, cows)
	}
}

// TestViews: a view shows the device as it was before its session, across
// the sessions after it; opening it again returns it; closing it leaves
// nothing; the device is never written.
func TestViews(t *testing.T) {
	w := newWorld(t)
	k := newFakeKernel(t, w)
	cfg := w.viewConfig(k)
	a := w.read(t)
	s1 := w.session(t, 1, 2, 15)
	b := w.read(t)
	s2 := w.session(t, 2, 7)
	c := w.read(t)
	ctx := context.Background()
	for _, tc := range []struct {
		id   string
		want []byte
	}{{s1, a}, {s2, b}} {
		v, err := rollback.OpenView(ctx, cfg, tc.id)
		if err != nil {
			t.Fatal(err)
		}
		checkView(t, k, v, tc.want, "open "+tc.id)
		again, err := rollback.OpenView(ctx, cfg, tc.id)
		if err != nil || again.DM != v.DM {
			t.Fatalf("open again: %+v, %v", again, err)
		}
		if _, err := rollback.CloseView(ctx, cfg, tc.id); err != nil {
			t.Fatal(err)
		}
		checkClosed(t, k, "close "+tc.id)
	}
	if _, err := rollback.CloseView(ctx, cfg, s1); err == nil {
		t.Error("closing a view that is not open succeeded")
	}
	if !bytes.Equal(w.read(t), c) {
		t.Error("a view changed the device")
	}
}

// TestViewCrashes: an open killed before or after the view is stacked, or a
// close killed before or after the view is removed, leaves a record that
// the next open or close of the view finishes: the view then shows the
// right state, and closing leaves nothing.
func TestViewCrashes(t *testing.T) {
	ctx := context.Background()
	for _, crash := range []struct{ before, after string }{
		{before: "AddView"}, {after: "AddView"}, {before: "RemoveView"}, {after: "RemoveView"},
	} {
		name := fmt.Sprintf("%+v", crash)
		w := newWorld(t)
		k := newFakeKernel(t, w)
		cfg := w.viewConfig(k)
		a := w.read(t)
		s1 := w.session(t, 1, 2, 15)
		w.session(t, 2, 7)
		if crash.before == "AddView" || crash.after == "AddView" {
			k.crashBefore, k.crashAfter = crash.before, crash.after
			if where := crashes(func() { rollback.OpenView(ctx, cfg, s1) }); where == "" {
				t.Fatalf("%s: the open did not crash", name)
			}
			v, err := rollback.OpenView(ctx, cfg, s1)
			if err != nil {
				t.Fatalf("%s: open after the crash: %v", name, err)
			}
			checkView(t, k, v, a, name)
		} else {
			v, err := rollback.OpenView(ctx, cfg, s1)
			if err != nil {
				t.Fatal(err)
			}
			checkView(t, k, v, a, name)
			k.crashBefore, k.crashAfter = crash.before, crash.after
			if where := crashes(func() { rollback.CloseView(ctx, cfg, s1) }); where == "" {
				t.Fatalf("%s: the close did not crash", name)
			}
		}
		if _, err := rollback.CloseView(ctx, cfg, s1); err != nil {
			t.Fatalf("%s: close: %v", name, err)
		}
		checkClosed(t, k, name)
	}
}

// crashes runs f and returns where it crashed ("" when it did not).
func crashes(f func()) (where string) {
	defer func() {
		if v := recover(); v != nil {
			c, ok := v.(kernelCrash)
			if !ok {
				panic(v)
			}
			where = c.where
		}
	}()
	f()
	return ""
}

// TestInstantRestore: restore --merge records the merge before the kernel
// sees it and shows the restored device at once, recorded by the armed
// session; where the kernel refuses the table, the normal restore runs
// instead and nothing of the merge is left.
func TestInstantRestore(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		w := newWorld(t)
		k := newFakeKernel(t, w)
		k.refuseMerge = refuse
		cfg := w.viewConfig(k)
		var warned []string
		cfg.Warn = func(s string) { warned = append(warned, s) }
		a := w.read(t)
		s1 := w.session(t, 1, 2, 15)
		w.session(t, 2, 7)
		b := w.read(t)
		r, err := rollback.Open(cfg, "sdb1", s1)
		if err != nil {
			t.Fatal(err)
		}
		sessions, _ := r.Sessions()
		target, _ := r.Find(sessions, s1)
		pd, err := r.Prepare(context.Background(), sessions, target, rollback.DeviceOptions{Merge: true})
		if err != nil {
			t.Fatal(err)
		}
		res, err := pd.Run(context.Background())
		r.Close()
		if err != nil {
			t.Fatalf("refused %v: %v", refuse, err)
		}
		if !bytes.Equal(w.read(t), a) {
			t.Fatalf("refused %v: the device does not show the restored state", refuse)
		}
		ms, err := session.LoadMerges(w.state)
		if err != nil {
			t.Fatal(err)
		}
		cows, _ := filepath.Glob(filepath.Join(w.state, "merges", "*"))
		if refuse {
			if res.Merge == nil || res.Merge.Started || res.Merge.FallbackReason == "" || !res.Undoable ||
				len(warned) != 1 || k.merged != 0 || len(ms) != 0 || len(cows) != 0 {
				t.Fatalf("refused: result %+v, warnings %q, merges %+v, files %v", res.Merge, warned, ms, cows)
			}
			w.mustRestore(t, res.Undo, b, "undo of the fallback")
			continue
		}
		if res.Merge == nil || !res.Merge.Started || k.merged != 1 || len(ms) != 1 || ms[0].Phase != session.MergeRunning ||
			ms[0].Session != s1 || ms[0].Recording != res.Merge.Recording || len(cows) != 1 || cows[0] != ms[0].COW {
			t.Fatalf("merge: result %+v, merges %+v, files %v", res.Merge, ms, cows)
		}
		// The recording session holds what the merge overwrote: once
		// closed (the watcher does it when the merge is done, as here),
		// restoring it undoes the instant restore.
		if err := os.Remove(ms[0].COW); err != nil {
			t.Fatal(err)
		}
		if err := session.SaveMerges(w.state, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := w.manager().Rotate(context.Background(), "sdb1", "merge done"); err != nil {
			t.Fatal(err)
		}
		w.mustRestore(t, w.sessionNumbered(t, res.Merge.Recording), b, "undo of the instant restore")
	}
}
