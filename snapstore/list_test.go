//go:build !vm

package snapstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestListSessions(t *testing.T) {
	store := t.TempDir()
	at := func(sec int) time.Time { return fixtureTime.Add(time.Duration(sec) * time.Second) }
	mk := func(name string, armed time.Time) string {
		dir, err := CreateSession(store, State{Name: name, Device: Device{Path: "/dev/" + name, Size: 256 << 10}, ChunkSize: 4096, Times: Times{Armed: armed}})
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}

	// Complete and invalid sessions made by Convert.
	complete := makeClosedSession(t, store, fixtureOpts{chunkSectors: 8, devSize: 128 << 10, writes: 4, seed: 1})
	convertFixture(t, complete, ConvertOptions{})
	invalid := makeClosedSession(t, store, fixtureOpts{chunkSectors: 8, devSize: 128 << 10, writes: 4, seed: 2, invalid: true})
	convertFixture(t, invalid, ConvertOptions{})

	// Unconverted ones in each phase, and a conversion stopped half-way.
	armed := mk("sdc", at(100))
	open, err := MarkMounted(mk("sdc", at(200)), at(201), "xfs")
	if err != nil {
		t.Fatal(err)
	}
	closing := mk("sdc", at(300))
	if err := MarkClosing(closing); err != nil {
		t.Fatal(err)
	}
	halfway := makeClosedSession(t, store, fixtureOpts{chunkSectors: 8, devSize: 128 << 10, writes: 4, seed: 3})
	stop := errors.New("stop")
	Convert(context.Background(), halfway.dir, ConvertOptions{Now: fixedNow, AfterStep: func(s string) error {
		if s == StepPunch {
			return stop
		}
		return nil
	}})

	// A seed session, a damaged and a newer-format one.
	seedSession(t, store, "loop0_1700000000", []int64{3, 1})
	damaged := goodSessionIn(t, store, 4)
	b, _ := os.ReadFile(filepath.Join(damaged, MetaFile))
	b[len(b)/2] ^= 4
	os.WriteFile(filepath.Join(damaged, MetaFile), b, 0o644)
	newer := goodSessionIn(t, store, 5)
	reseal(t, newer, func(m *Meta) { m.Dmsnap.FormatVersion = 9 })

	// Things that are not sessions.
	os.Mkdir(filepath.Join(store, "lost+found"), 0o755)
	os.WriteFile(filepath.Join(store, "sdz_123"), nil, 0o644)

	infos, err := ListSessions(store)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]SessionInfo{}
	for _, in := range infos {
		got[in.Dir] = in
	}
	for _, want := range []struct {
		dir    string
		status Status
		phase  Phase
	}{
		{complete.dir, StatusComplete, ""},
		{invalid.dir, StatusInvalid, ""},
		{armed, StatusIncomplete, PhaseArmed},
		{open, StatusIncomplete, PhaseOpen},
		{closing, StatusIncomplete, PhaseClosing},
		{halfway.dir, StatusIncomplete, PhaseClosing},
		{filepath.Join(store, "loop0_1700000000"), StatusUnverified, ""},
		{damaged, StatusDamaged, ""},
		{newer, StatusDamaged, ""},
	} {
		in, ok := got[want.dir]
		if !ok {
			t.Errorf("%s not listed", filepath.Base(want.dir))
			continue
		}
		if in.Status != want.status || in.Phase != want.phase {
			t.Errorf("%s: %s/%s, want %s/%s (err %v)", in.ID, in.Status, in.Phase, want.status, want.phase, in.Err)
		}
		delete(got, want.dir)
	}
	if len(got) != 0 {
		t.Errorf("listed more: %v", got)
	}
	if in := Inspect(damaged); !errors.Is(in.Err, ErrChecksum) {
		t.Errorf("damaged session's error: %v", in.Err)
	}
	if in := Inspect(newer); !errors.Is(in.Err, ErrUnsupportedVersion) {
		t.Errorf("newer session's error: %v", in.Err)
	}
	// Sorted by name, then time.
	for i := 1; i < len(infos); i++ {
		a, b := infos[i-1], infos[i]
		if a.Name > b.Name || a.Name == b.Name && a.Time.After(b.Time) {
			t.Errorf("%s listed before %s", a.ID, b.ID)
		}
	}
	if l, err := ListSessions(filepath.Join(store, "missing")); err != nil || l != nil {
		t.Errorf("missing store: %v, %v", l, err)
	}
}

// goodSessionIn converts a small session of device "sdd" in store.
func goodSessionIn(t *testing.T, store string, seed uint64) string {
	t.Helper()
	fx := makeClosedSession(t, store, fixtureOpts{chunkSectors: 8, devSize: 64 << 10, writes: 3, seed: seed})
	convertFixture(t, fx, ConvertOptions{})
	return fx.dir
}

// Sessions are listed in the order they were taken: by sequence number,
// those without one (the seed's, format 1) first, by time; never by the
// clock alone.
func TestListOrderFollowsSequence(t *testing.T) {
	a := SessionInfo{ID: "d_500", Name: "d", Time: time.Unix(500, 0), Sequence: 1}
	b := SessionInfo{ID: "d_100", Name: "d", Time: time.Unix(100, 0), Sequence: 2}
	c := SessionInfo{ID: "d_300", Name: "d", Time: time.Unix(300, 0), Sequence: 3}
	seedOld := SessionInfo{ID: "d_50", Name: "d", Time: time.Unix(50, 0)}
	seedNew := SessionInfo{ID: "d_900", Name: "d", Time: time.Unix(900, 0)}
	got := []SessionInfo{c, seedNew, a, b, seedOld}
	slices.SortFunc(got, Order)
	var ids []string
	for _, s := range got {
		ids = append(ids, s.ID)
	}
	if want := []string{"d_50", "d_900", "d_500", "d_100", "d_300"}; !slices.Equal(ids, want) {
		t.Fatalf("order %v, want %v", ids, want)
	}
}
