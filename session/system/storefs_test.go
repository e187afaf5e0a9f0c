package system

import (
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/mountinfo"
	"github.com/dmsnap/dmsnap/session"
)

func TestStoreNote(t *testing.T) {
	m := mountinfo.Mount{FSType: "ext4", Source: "/dev/vdb", MountPoint: "/snapshot"}
	note := StoreNote("/snapshot", StoreFS{Mount: m, Ext4: &session.ExtJournal{Journal: true}})
	for _, w := range []string{"/snapshot", "/dev/vdb", "without fast commits", "tune2fs -O fast_commit /dev/vdb", "unmount /snapshot"} {
		if !strings.Contains(note, w) {
			t.Errorf("note %q lacks %q", note, w)
		}
	}
	for _, c := range []StoreFS{
		{Mount: m, Ext4: &session.ExtJournal{Journal: true, FastCommit: true}}, // has fast commits
		{Mount: m, Ext4: &session.ExtJournal{}},                                // no journal: no commit to pay
		{Mount: m},                                                             // superblock unread
		{Mount: mountinfo.Mount{FSType: "xfs", Source: "/dev/vdb"}},
		{Mount: mountinfo.Mount{FSType: "tmpfs", Source: "tmpfs"}},
	} {
		if n := StoreNote("/snapshot", c); n != "" {
			t.Errorf("%+v: note %q, want none", c, n)
		}
	}
}
