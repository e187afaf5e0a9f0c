//go:build !vm

package snapstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func ptr[T any](v T) *T { return &v }

// A label and a pin set while a session is unfinished go into state.json
// and, at conversion, into meta.json; set on a finished session they
// rewrite meta.json with a renewed self-checksum and nothing else changed.
func TestSetMarkBeforeAndAfterConversion(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 1 << 20, writes: 20, seed: 3})
	label, pinned, err := SetMark(fx.dir, Mark{Label: ptr("before the upgrade")})
	if err != nil || label != "before the upgrade" || pinned {
		t.Fatalf("SetMark on the unfinished session: %q %v %v", label, pinned, err)
	}
	if st, err := ReadState(fx.dir); err != nil || st.Label != "before the upgrade" || st.Phase != PhaseClosing {
		t.Fatalf("state.json after SetMark: %+v %v", st, err)
	}
	convertFixture(t, fx, ConvertOptions{})
	info := Inspect(fx.dir)
	if info.Status != StatusComplete || info.Label != "before the upgrade" || info.Pinned {
		t.Fatalf("converted: %+v", info)
	}
	before := *info.Meta

	if label, pinned, err = SetMark(fx.dir, Mark{Pinned: ptr(true)}); err != nil || label != "before the upgrade" || !pinned {
		t.Fatalf("pin: %q %v %v", label, pinned, err)
	}
	info = Inspect(fx.dir)
	if info.Status != StatusComplete || !info.Pinned || info.Label != "before the upgrade" {
		t.Fatalf("after pinning: %+v (%v)", info, info.Err)
	}
	after := *info.Meta
	d := *after.Dmsnap
	d.Pinned, d.Checksums.Meta = false, before.Dmsnap.Checksums.Meta
	after.Dmsnap = &d
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("pinning changed more than the pin:\n%+v\n%+v", before.Dmsnap, after.Dmsnap)
	}
	if _, err := Verify(context.Background(), fx.dir); err != nil {
		t.Fatalf("verify after pinning: %v", err)
	}
	if _, _, err := SetMark(fx.dir, Mark{Label: ptr(""), Pinned: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(fx.dir, MetaFile))
	if bytes.Contains(b, []byte(`"label"`)) || bytes.Contains(b, []byte(`"pinned"`)) {
		t.Fatalf("cleared label and pin still in meta.json:\n%s", b)
	}
}

// Bad labels and seed sessions are refused, changing nothing.
func TestSetMarkRefusals(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 1 << 20, writes: 5, seed: 4})
	convertFixture(t, fx, ConvertOptions{})
	metaPath := filepath.Join(fx.dir, MetaFile)
	orig, _ := os.ReadFile(metaPath)
	for _, bad := range []string{"a\nb", "tab\there", string([]byte{0xff, 0xfe}), string(bytes.Repeat([]byte("x"), MaxLabelLen+1))} {
		if _, _, err := SetMark(fx.dir, Mark{Label: ptr(bad)}); err == nil {
			t.Errorf("label %q accepted", bad)
		}
	}
	if now, _ := os.ReadFile(metaPath); !bytes.Equal(now, orig) {
		t.Fatal("a refused label changed meta.json")
	}

	// A seed session: the six keys only.
	var m Meta
	if err := json.Unmarshal(orig, &m); err != nil {
		t.Fatal(err)
	}
	m.Dmsnap = nil
	seed, err := EncodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(metaPath, seed, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := SetMark(fx.dir, Mark{Pinned: ptr(true)}); !errors.Is(err, ErrSeedSession) {
		t.Fatalf("pin of a seed session: %v, want ErrSeedSession", err)
	}
	if now, _ := os.ReadFile(metaPath); !bytes.Equal(now, seed) {
		t.Fatal("a refused pin changed the seed's meta.json")
	}
}

// Prune never removes a pinned session, and so none after it either.
func TestPlanPruneStopsAtPinned(t *testing.T) {
	infos := pruneInfos(t.TempDir(), StatusComplete, StatusComplete, StatusComplete, StatusComplete)
	infos[1].Pinned = true
	p := PlanPrune(infos, PruneRequest{Name: "d", Keep: 0})
	if got := removedIDs(p); len(got) != 1 || got[0] != "d_a" || p.Short == "" {
		t.Fatalf("removed %v (%s), want d_a only, stopped at the pinned d_b", got, p.Short)
	}
}
