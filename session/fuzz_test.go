package session

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/names"
)

// Fuzz targets for the state directory's files: registry.json,
// merges.json, views.json. Each: no panic; a refused input is an error
// naming the file; an accepted one keeps the file's rules and encodes (as
// Save writes it) to bytes that parse again and encode the same.

func indentJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatalf("accepted value does not encode: %v", err)
	}
	return append(b, '\n')
}

func mustIndent(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

func FuzzRegistry(f *testing.F) {
	r := sampleRegistry()
	r.Version = RegistryVersion
	f.Add(mustIndent(r))
	f.Add([]byte(`{"version": 1, "devices": []}`))
	f.Add([]byte(`{"version": 2, "devices": []}`))
	f.Add([]byte(`{"version": 1, "devices": [null]}`))
	const name = "/var/lib/dmsnap/registry.json"
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRegistry(data, name)
		if err != nil {
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if r.Version != RegistryVersion {
			t.Fatalf("version %d", r.Version)
		}
		seen := map[string]bool{}
		for _, d := range r.Devices {
			if err := names.Validate(d.Name); err != nil || seen[d.Name] {
				t.Fatalf("accepted device name %q (twice: %v): %v", d.Name, seen[d.Name], err)
			}
			seen[d.Name] = true
			live := 0
			for _, s := range d.Sessions {
				if s.N < 1 || s.N >= d.NextSession {
					t.Fatalf("device %s: accepted session %d, next is %d", d.Name, s.N, d.NextSession)
				}
				if s.State.Live() {
					live++
				}
			}
			if live > 1 {
				t.Fatalf("device %s: accepted %d live sessions", d.Name, live)
			}
		}
		b1 := indentJSON(t, r)
		r2, err := ParseRegistry(b1, name)
		if err != nil {
			t.Fatalf("re-encoded registry does not parse: %v\n%s", err, b1)
		}
		if b2 := indentJSON(t, r2); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
	})
}

const fuzzStateDir = "/var/lib/dmsnap"

func FuzzMerges(f *testing.F) {
	started := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Add(mustIndent([]Merge{
		{Device: "sdb1", Session: "sdb1_1600000000", COW: fuzzStateDir + "/merges/sdb1.cow", Started: started, Recording: 4, Phase: MergeRunning},
		{Device: "vg-lv", Session: "vg-lv_1", COW: fuzzStateDir + "/merges/vg-lv.cow", Started: started, Recording: 1, Phase: MergeStarting},
	}))
	f.Add([]byte(`[{"device":"a","session":"a_1","cow":"/var/lib/dmsnap/merges/../a.cow","recording_session":1,"phase":"merging"}]`))
	f.Add([]byte(`[]`))
	const name = fuzzStateDir + "/" + MergesFile
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := ParseMerges(data, name, fuzzStateDir)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "merges file "+name+" is damaged") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		devices, cows := map[string]bool{}, map[string]bool{}
		for _, mg := range ms {
			if err := names.Validate(mg.Device); err != nil {
				t.Fatalf("accepted device name %q: %v", mg.Device, err)
			}
			if filepath.Dir(mg.COW) != fuzzStateDir+"/merges" || filepath.Clean(mg.COW) != mg.COW || strings.ContainsRune(mg.COW, 0) {
				t.Fatalf("accepted store %q, not a file in %s/merges", mg.COW, fuzzStateDir)
			}
			if mg.Phase != MergeStarting && mg.Phase != MergeRunning {
				t.Fatalf("accepted phase %q", mg.Phase)
			}
			if devices[mg.Device] || cows[mg.COW] {
				t.Fatalf("accepted %s or %s twice", mg.Device, mg.COW)
			}
			devices[mg.Device], cows[mg.COW] = true, true
		}
		b1 := indentJSON(t, ms)
		ms2, err := ParseMerges(b1, name, fuzzStateDir)
		if err != nil {
			t.Fatalf("re-encoded merges do not parse: %v\n%s", err, b1)
		}
		if b2 := indentJSON(t, ms2); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
	})
}

func FuzzViews(f *testing.F) {
	f.Add(mustIndent([]View{
		{ID: "sdb1_1600000000", Name: "sdb1", DM: "dmsnap-sdb1-at1600000000", COW: fuzzStateDir + "/views/sdb1_1600000000.cow", Mount: "/mnt/old"},
		{ID: "sdc_7", Name: "sdc", DM: "dmsnap-sdc-at7", COW: fuzzStateDir + "/views/sdc_7.cow", Opening: true},
	}))
	f.Add([]byte(`[{"id":"a_1","name":"a","dm":"dmsnap-a","cow":"/etc/passwd"}]`))
	f.Add([]byte(`[]`))
	const name = fuzzStateDir + "/" + ViewsFile
	f.Fuzz(func(t *testing.T, data []byte) {
		vs, err := ParseViews(data, name, fuzzStateDir)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "views file "+name+" is damaged") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		ids, dms, cows := map[string]bool{}, map[string]bool{}, map[string]bool{}
		for _, v := range vs {
			if err := names.Validate(v.Name); err != nil {
				t.Fatalf("accepted device name %q: %v", v.Name, err)
			}
			if ValidateSessionID(v.ID) != nil || v.DM != ViewDMName(v.Name, v.ID) || !strings.HasPrefix(v.DM, "dmsnap-"+v.Name+"-at") {
				t.Fatalf("accepted view %q of %q as device %q", v.ID, v.Name, v.DM)
			}
			if filepath.Dir(v.COW) != fuzzStateDir+"/views" || filepath.Clean(v.COW) != v.COW || strings.ContainsRune(v.COW, 0) {
				t.Fatalf("accepted COW %q, not a file in %s/views", v.COW, fuzzStateDir)
			}
			if v.Mount != "" && (!filepath.IsAbs(v.Mount) || filepath.Clean(v.Mount) != v.Mount) {
				t.Fatalf("accepted mount point %q", v.Mount)
			}
			if ids[v.ID] || dms[v.DM] || cows[v.COW] {
				t.Fatalf("accepted %s, %s or %s twice", v.ID, v.DM, v.COW)
			}
			ids[v.ID], dms[v.DM], cows[v.COW] = true, true, true
		}
		b1 := indentJSON(t, vs)
		vs2, err := ParseViews(b1, name, fuzzStateDir)
		if err != nil {
			t.Fatalf("re-encoded views do not parse: %v\n%s", err, b1)
		}
		if b2 := indentJSON(t, vs2); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
	})
}
