package session

import (
	"reflect"
	"testing"
)

func mi(id int, dev DevNum, point string) MountInfo {
	return MountInfo{ID: id, ParentID: 1, Dev: dev, Root: "/", MountPoint: point, Options: "rw", FSType: "ext4", Source: "/dev/x", SuperOptions: "rw"}
}

type ev struct {
	kind MountEventKind
	dev  DevNum
	n    int
}

func evs(es []MountEvent) []ev {
	var out []ev
	for _, e := range es {
		out = append(out, ev{e.Kind, e.Dev, len(e.Mounts)})
	}
	return out
}

func TestDiffMounts(t *testing.T) {
	a, b, other := DevNum{Major: 253, Minor: 1}, DevNum{Major: 253, Minor: 2}, DevNum{Major: 8, Minor: 1}
	root := mi(1, other, "/")
	cases := []struct {
		name      string
		prev, cur []MountInfo
		want      []ev
	}{
		{"nothing", []MountInfo{root}, []MountInfo{root}, nil},
		{"mount", []MountInfo{root}, []MountInfo{root, mi(10, a, "/mnt")}, []ev{{DeviceMounted, a, 1}}},
		{"unmount", []MountInfo{root, mi(10, a, "/mnt")}, []MountInfo{root}, []ev{{DeviceUnmounted, a, 1}}},
		{"bind added", []MountInfo{mi(10, a, "/mnt")}, []MountInfo{mi(10, a, "/mnt"), mi(11, a, "/srv")}, nil},
		{"one of two unmounted", []MountInfo{mi(10, a, "/mnt"), mi(11, a, "/srv")}, []MountInfo{mi(11, a, "/srv")}, nil},
		{"remounted between reads", []MountInfo{mi(10, a, "/mnt")}, []MountInfo{mi(12, a, "/mnt")},
			[]ev{{DeviceUnmounted, a, 1}, {DeviceMounted, a, 1}}},
		{"two devices, sorted", []MountInfo{mi(20, b, "/b")}, []MountInfo{mi(10, a, "/a")},
			[]ev{{DeviceMounted, a, 1}, {DeviceUnmounted, b, 1}}},
		{"uninteresting device", []MountInfo{}, []MountInfo{mi(30, other, "/x")}, nil},
	}
	interest := func(d DevNum) bool { return d != other }
	for _, c := range cases {
		got := evs(DiffMounts(c.prev, c.cur, interest))
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
	if got := DiffMounts(nil, []MountInfo{root}, nil); len(got) != 1 || got[0].Dev != other {
		t.Fatalf("nil interest means every device: %v", got)
	}
}
