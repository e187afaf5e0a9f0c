package session

import (
	"errors"
	"strings"
	"testing"
)

// A btrfs mount shows an anonymous device number in mountinfo; the origin
// is known only by its source path.
func TestResolveSourceDevs(t *testing.T) {
	table := "36 25 0:45 / /mnt/b rw,relatime shared:1 - btrfs /dev/mapper/dmsnap-vol rw,space_cache=v2\n" +
		"37 25 254:3 / /mnt/e rw,relatime shared:2 - ext4 /dev/mapper/dmsnap-other rw\n" +
		"38 25 0:46 / /mnt/t rw - tmpfs tmpfs rw\n" +
		"39 25 0:47 / /mnt/g rw - btrfs /dev/gone rw\n"
	ms, err := ParseMountInfo(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	lookups := 0
	ms = ResolveSourceDevs(ms, func(p string) (DevNum, error) {
		lookups++
		if p == "/dev/mapper/dmsnap-vol" {
			return DevNum{Major: 254, Minor: 7}, nil
		}
		return DevNum{}, errors.New("no such device")
	})
	want := []DevNum{{Major: 254, Minor: 7}, {Major: 254, Minor: 3}, {Major: 0, Minor: 46}, {Major: 0, Minor: 47}}
	for i, w := range want {
		if ms[i].Dev != w {
			t.Errorf("mount %d (%s): dev %s, want %s", i, ms[i].MountPoint, ms[i].Dev, w)
		}
	}
	if lookups != 2 {
		t.Errorf("looked up %d sources, want 2 (only anonymous numbers with a /dev source)", lookups)
	}
}
