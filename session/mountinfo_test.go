package session

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func parseFile(t *testing.T, name string) []MountInfo {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := ParseMountInfo(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func find(ms []MountInfo, point string) (MountInfo, bool) {
	for _, m := range ms {
		if m.MountPoint == point {
			return m, true
		}
	}
	return MountInfo{}, false
}

func TestParseMountInfoDebian(t *testing.T) {
	ms := parseFile(t, "debian12.mountinfo")
	if len(ms) != 23 {
		t.Fatalf("%d entries, want 23", len(ms))
	}
	root, ok := find(ms, "/")
	want := MountInfo{ID: 28, ParentID: 1, Dev: DevNum{Major: 254, Minor: 1}, Root: "/", MountPoint: "/", Options: "rw,relatime",
		Optional: []string{"shared:1"}, FSType: "ext4", Source: "/dev/mapper/debian--vg-root", SuperOptions: "rw,errors=remount-ro"}
	if !ok || !reflect.DeepEqual(root, want) {
		t.Fatalf("root entry\n got %+v\nwant %+v", root, want)
	}
	data, _ := find(ms, "/srv/data")
	if data.Dev != (DevNum{Major: 253, Minor: 3}) || data.Source != "/dev/mapper/dmsnap-sdb1" || data.FSType != "ext4" {
		t.Fatalf("dmsnap mount %+v", data)
	}
	autofs, _ := find(ms, "/proc/sys/fs/binfmt_misc")
	if autofs.Source != "systemd-1" || autofs.FSType != "autofs" || !strings.Contains(autofs.SuperOptions, "pipe_ino=15713") {
		t.Fatalf("autofs entry %+v", autofs)
	}
	byDev := MountsByDev(ms, func(d DevNum) bool { return d.Major == 253 })
	if len(byDev) != 1 || len(byDev[DevNum{Major: 253, Minor: 3}]) != 1 {
		t.Fatalf("by dev %v", byDev)
	}
}

func TestParseMountInfoBindMounts(t *testing.T) {
	ms := parseFile(t, "bind.mountinfo")
	sdb1 := MountsByDev(ms, nil)[DevNum{Major: 253, Minor: 3}]
	if len(sdb1) != 3 {
		t.Fatalf("sdb1 has %d mounts, want 3 (one plus two binds)", len(sdb1))
	}
	www, _ := find(ms, "/var/www")
	if www.Root != "/www" || www.ID != 70 {
		t.Fatalf("bind of a subdirectory: %+v", www)
	}
	ro, _ := find(ms, "/mnt/ro")
	if ro.Options != "ro,relatime" || ro.SuperOptions != "rw,attr2,inode64,logbufs=8,logbsize=32k,noquota" {
		t.Fatalf("read-only bind: %+v", ro)
	}
	tmp, _ := find(ms, "/mnt/vol/tmp")
	if !reflect.DeepEqual(tmp.Optional, []string{"shared:40", "master:12", "propagate_from:1"}) || tmp.ParentID != 80 {
		t.Fatalf("optional fields: %+v", tmp)
	}
	btr, _ := find(ms, "/mnt/btr")
	if btr.Optional != nil || btr.FSType != "btrfs" || btr.SuperOptions != "subvolid=5,subvol=/" {
		t.Fatalf("no optional fields: %+v", btr)
	}
}

func TestParseMountInfoEscapes(t *testing.T) {
	ms := parseFile(t, "spaces.mountinfo")
	cases := []struct{ point, root, source string }{
		{"/media/user/My Disk", "/", "/dev/mapper/dmsnap-sdb1"},
		{"/mnt/tab\tand\\backslash", "/dir with space", "/dev/mapper/dmsnap-sdb1"},
		{"/mnt/new\nline", "/", "user@host:/path x"},
		{"/mnt/gone (deleted)", "/", "/dev/mapper/dmsnap-sdd"},
	}
	for _, c := range cases {
		m, ok := find(ms, c.point)
		if !ok {
			t.Errorf("no mount at %q; have %q", c.point, points(ms))
			continue
		}
		if m.Root != c.root || m.Source != c.source {
			t.Errorf("%q: root %q source %q, want %q %q", c.point, m.Root, m.Source, c.root, c.source)
		}
	}
}

func points(ms []MountInfo) []string {
	var p []string
	for _, m := range ms {
		p = append(p, m.MountPoint)
	}
	return p
}

func TestParseMountInfoErrors(t *testing.T) {
	good := "28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
	cases := map[string]string{
		"no separator":      "29 28 8:1 / /boot rw,relatime shared:1 ext4 /dev/sda1 rw\n",
		"bad device":        "29 28 8-1 / /boot rw,relatime - ext4 /dev/sda1 rw\n",
		"bad id":            "x 28 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw\n",
		"short":             "29 28 8:1 / /boot\n",
		"missing super opt": "29 28 8:1 / /boot rw,relatime - ext4 /dev/sda1\n",
		"empty type":        "29 28 8:1 / /boot rw,relatime -  /dev/sda1 rw\n",
		"double space":      "29 28 8:1  /boot rw,relatime - ext4 /dev/sda1 rw\n",
	}
	for name, line := range cases {
		_, err := ParseMountInfo(strings.NewReader(good + line))
		if err == nil {
			t.Errorf("%s: accepted %q", name, line)
			continue
		}
		if !strings.Contains(err.Error(), "mountinfo line 2") {
			t.Errorf("%s: error %q does not name line 2", name, err)
		}
	}
	if ms, err := ParseMountInfo(strings.NewReader("")); err != nil || len(ms) != 0 {
		t.Fatalf("empty table: %v %v", ms, err)
	}
}

func TestMountInfoLineRoundTrip(t *testing.T) {
	for _, name := range []string{"debian12.mountinfo", "bind.mountinfo", "spaces.mountinfo"} {
		raw, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		ms := parseFile(t, name)
		var b strings.Builder
		for _, m := range ms {
			b.WriteString(m.Line() + "\n")
		}
		if b.String() != string(raw) {
			t.Errorf("%s: Line does not reproduce the kernel's text:\n%s", name, b.String())
		}
	}
}

// FuzzParseMountInfo: the parser never panics, and whatever it accepts
// renders (Line) to a table that parses back to the same entries.
func FuzzParseMountInfo(f *testing.F) {
	for _, name := range []string{"debian12.mountinfo", "bind.mountinfo", "spaces.mountinfo"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("1 0 0:0 / / rw - x y z\n")
	f.Add("1 0 0:0 \\ \\134 - - - - -\n")
	f.Fuzz(func(t *testing.T, in string) {
		ms, err := ParseMountInfo(strings.NewReader(in))
		if err != nil {
			return
		}
		var b strings.Builder
		for _, m := range ms {
			b.WriteString(m.Line() + "\n")
		}
		again, err := ParseMountInfo(strings.NewReader(b.String()))
		if err != nil {
			t.Fatalf("rendered table does not parse: %v\n%q", err, b.String())
		}
		if len(again) != len(ms) {
			t.Fatalf("%d entries, then %d", len(ms), len(again))
		}
		for i := range ms {
			if !reflect.DeepEqual(ms[i], again[i]) {
				t.Fatalf("entry %d\n first %#v\nagain %#v", i, ms[i], again[i])
			}
		}
	})
}
