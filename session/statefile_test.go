package session_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
)

const testStateDir = "/var/lib/dmsnap"

func goodMerge() session.Merge {
	return session.Merge{Device: "sdb1", Session: "sdb1_1600000000", COW: testStateDir + "/merges/sdb1.cow",
		Started: time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC), Recording: 4, Phase: session.MergeRunning}
}

func goodView() session.View {
	return session.View{ID: "sdb1_1600000000", Name: "sdb1", DM: "dmsnap-sdb1-at1600000000",
		COW: testStateDir + "/views/sdb1_1600000000.cow", Mount: "/mnt/old"}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseMergesRefuses(t *testing.T) {
	const name = testStateDir + "/merges.json"
	good := goodMerge()
	if ms, err := session.ParseMerges(mustJSON(t, []session.Merge{good}), name, testStateDir); err != nil || len(ms) != 1 || ms[0] != good {
		t.Fatalf("good record: %+v, %v", ms, err)
	}
	// The state directory may be given relative or unclean: it is made
	// absolute before the paths are compared with it.
	if _, err := session.ParseMerges(mustJSON(t, []session.Merge{good}), name, testStateDir+"/"); err != nil {
		t.Fatalf("state directory with a trailing slash: %v", err)
	}
	with := func(fn func(*session.Merge)) []byte {
		mg := goodMerge()
		fn(&mg)
		return mustJSON(t, []session.Merge{mg})
	}
	other := goodMerge()
	other.Device, other.COW = "sdc", testStateDir+"/merges/sdc.cow"
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"outside the state directory", with(func(m *session.Merge) { m.COW = "/etc/passwd" }), "not a file in " + testStateDir + "/merges"},
		{"in the state directory itself", with(func(m *session.Merge) { m.COW = testStateDir + "/registry.json" }), "not a file in"},
		{"in views/", with(func(m *session.Merge) { m.COW = testStateDir + "/views/x.cow" }), "not a file in"},
		{"below merges/", with(func(m *session.Merge) { m.COW = testStateDir + "/merges/a/b.cow" }), "not a file in"},
		{"../ escape", with(func(m *session.Merge) { m.COW = testStateDir + "/merges/../../../etc/shadow" }), "not clean"},
		{"merges/.. ", with(func(m *session.Merge) { m.COW = testStateDir + "/merges/.." }), "not clean"},
		{"double slash", with(func(m *session.Merge) { m.COW = testStateDir + "//merges/sdb1.cow" }), "not clean"},
		{"relative", with(func(m *session.Merge) { m.COW = "merges/sdb1.cow" }), "not absolute"},
		{"empty path", with(func(m *session.Merge) { m.COW = "" }), "path is empty"},
		{"NUL", with(func(m *session.Merge) { m.COW = testStateDir + "/merges/a\x00.cow" }), "NUL"},
		{"unknown phase", with(func(m *session.Merge) { m.Phase = "done" }), `phase "done"`},
		{"no phase", with(func(m *session.Merge) { m.Phase = "" }), `phase ""`},
		{"bad device name", with(func(m *session.Merge) { m.Device = "../sdb1" }), "use only letters"},
		{"reserved device name", with(func(m *session.Merge) { m.Device = "sdb1-real" }), "ends like"},
		{"empty device name", with(func(m *session.Merge) { m.Device = "" }), "empty device name"},
		{"bad session ID", with(func(m *session.Merge) { m.Session = "a/b" }), "contains '/'"},
		{"no recording session", with(func(m *session.Merge) { m.Recording = 0 }), "recording session 0"},
		{"device twice", mustJSON(t, []session.Merge{good, good}), "record 1 (device \"sdb1\"): the device has a merge in record 0"},
		{"store twice", mustJSON(t, []session.Merge{good, func() session.Merge { m := other; m.COW = good.COW; return m }()}), "record 0's too"},
		{"unknown key", []byte(`[{"device":"sdb1","session":"sdb1_1","cow":"/var/lib/dmsnap/merges/sdb1.cow","recording_session":1,"phase":"merging","extra":1}]`), `unknown field "extra"`},
		{"not a list", []byte(`{"device":"sdb1"}`), "cannot unmarshal object"},
		{"cut short", []byte(`[{"device":`), "at byte 11: the file ends in the middle"},
		{"syntax", []byte(`[{"device" "sdb1"}]`), "at byte 12: invalid character"},
		{"trailing data", append(mustJSON(t, []session.Merge{good}), "[]"...), "data after the JSON value"},
		{"empty", nil, "empty file"},
	} {
		_, err := session.ParseMerges(c.b, name, testStateDir)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "merges file "+name+" is damaged") ||
			!strings.Contains(err.Error(), "move it away") {
			t.Errorf("%s: %v, want an error naming %s and saying %q", c.name, err, name, c.want)
		}
	}
}

func TestParseViewsRefuses(t *testing.T) {
	const name = testStateDir + "/views.json"
	good := goodView()
	opening := session.View{ID: "sdc_7", Name: "sdc", DM: "dmsnap-sdc-at7", COW: testStateDir + "/views/sdc_7.cow", Opening: true}
	if vs, err := session.ParseViews(mustJSON(t, []session.View{good, opening}), name, testStateDir); err != nil || !reflect.DeepEqual(vs, []session.View{good, opening}) {
		t.Fatalf("good records: %+v, %v", vs, err)
	}
	with := func(fn func(*session.View)) []byte {
		v := goodView()
		fn(&v)
		return mustJSON(t, []session.View{v})
	}
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"outside the state directory", with(func(v *session.View) { v.COW = "/dev/sda" }), "not a file in " + testStateDir + "/views"},
		{"in merges/", with(func(v *session.View) { v.COW = testStateDir + "/merges/sdb1.cow" }), "not a file in"},
		{"../ escape", with(func(v *session.View) { v.COW = testStateDir + "/views/../registry.json" }), "not clean"},
		{"relative", with(func(v *session.View) { v.COW = "views/x.cow" }), "not absolute"},
		{"no COW", with(func(v *session.View) { v.COW = "" }), "path is empty"},
		{"bad device name", with(func(v *session.View) { v.Name = "a b" }), "use only letters"},
		{"bad session ID", with(func(v *session.View) { v.ID = ".." }), "session ID"},
		{"another device-mapper device", with(func(v *session.View) { v.DM = "dmsnap-sdb1" }), `device-mapper name "dmsnap-sdb1" is not the view's (dmsnap-sdb1-at1600000000)`},
		{"relative mount point", with(func(v *session.View) { v.Mount = "mnt" }), "mount point"},
		{"unclean mount point", with(func(v *session.View) { v.Mount = "/mnt/../etc" }), "mount point"},
		{"session twice", mustJSON(t, []session.View{good, good}), "the session has a view in record 0"},
		{"COW twice", mustJSON(t, []session.View{good, func() session.View { v := opening; v.COW = good.COW; return v }()}), "record 0's too"},
		{"unknown key", []byte(`[{"id":"a_1","name":"a","dm":"dmsnap-a-at1","cow":"/var/lib/dmsnap/views/a_1.cow","size":3}]`), `unknown field "size"`},
		{"wrong type", []byte(`[{"id":1}]`), "at byte"},
	} {
		_, err := session.ParseViews(c.b, name, testStateDir)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "views file "+name+" is damaged") ||
			!strings.Contains(err.Error(), "move it away") {
			t.Errorf("%s: %v, want an error naming %s and saying %q", c.name, err, name, c.want)
		}
	}
}

// TestLoadStateFilesRefusePlantedPaths: LoadMerges and LoadViews check
// against the state directory they read, and Save refuses to write what
// Load would refuse.
func TestLoadStateFilesRefusePlantedPaths(t *testing.T) {
	state := t.TempDir()
	mg := goodMerge()
	mg.COW = filepath.Join(state, "merges", "sdb1.cow")
	if err := session.SaveMerges(state, []session.Merge{mg}); err != nil {
		t.Fatal(err)
	}
	if ms, err := session.LoadMerges(state); err != nil || len(ms) != 1 || ms[0] != mg {
		t.Fatalf("LoadMerges: %+v, %v", ms, err)
	}
	// The same bytes as another state directory's file: its store is not there.
	b, err := os.ReadFile(filepath.Join(state, session.MergesFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := session.ParseMerges(b, "merges.json", filepath.Join(state, "other")); err == nil || !strings.Contains(err.Error(), "not a file in") {
		t.Fatalf("a merges file read for another state directory: %v", err)
	}
	planted := mg
	planted.COW = state + "/merges/../../victim"
	if err := session.SaveMerges(state, []session.Merge{planted}); err == nil || !strings.Contains(err.Error(), "not clean") {
		t.Fatalf("SaveMerges of a record LoadMerges refuses: %v", err)
	}
	planted.COW = filepath.Clean(planted.COW)
	if err := os.WriteFile(filepath.Join(state, session.MergesFile), mustJSON(t, []session.Merge{planted}), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := session.LoadMerges(state); err == nil || !strings.Contains(err.Error(), filepath.Join(state, session.MergesFile)) {
		t.Fatalf("LoadMerges of a planted store path: %v", err)
	}
	// BlockersOf, which deactivate asks, fails rather than saying nothing blocks.
	if _, err := session.BlockersOf(state, "sdb1"); err == nil {
		t.Fatal("BlockersOf with a damaged merges file says nothing blocks")
	}

	v := goodView()
	v.COW, v.Mount = filepath.Join(state, "views", v.ID+".cow"), ""
	if err := session.SaveViews(state, []session.View{v}); err != nil {
		t.Fatal(err)
	}
	if vs, err := session.LoadViews(state); err != nil || len(vs) != 1 || vs[0] != v {
		t.Fatalf("LoadViews: %+v, %v", vs, err)
	}
	v.COW = "/etc/shadow"
	if err := session.SaveViews(state, []session.View{v}); err == nil {
		t.Fatal("SaveViews of a COW outside views/")
	}
	if err := os.WriteFile(filepath.Join(state, session.ViewsFile), mustJSON(t, []session.View{v}), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := session.LoadViews(state); err == nil || !strings.Contains(err.Error(), filepath.Join(state, session.ViewsFile)) {
		t.Fatalf("LoadViews of a planted COW path: %v", err)
	}
}
