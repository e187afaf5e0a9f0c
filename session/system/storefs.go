package system

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/dmsnap/dmsnap/internal/mountinfo"
	"github.com/dmsnap/dmsnap/session"
	"golang.org/x/sys/unix"
)

// The store's filesystem decides what a session costs the writes on the
// device: every first write to a chunk ends in an exception commit, a
// flush of the COW device, which the loop driver turns into an fsync of
// cow.img. On ext4 with a journal each such fsync commits the journal
// (the write changed cow.img's mtime), unless the filesystem has fast
// commits, which log the inode change in one block. make bench measures
// the difference (README, "Performance").

// StoreFS is the filesystem that holds a store directory.
type StoreFS struct {
	Mount mountinfo.Mount
	Ext4  *session.ExtJournal // ext4 only, when its superblock could be read
}

// StoreNote is the advice to print about the store's filesystem, or ""
// when there is none: an ext4 store with a journal and without fast
// commits makes every chunk's first write a full journal commit.
func StoreNote(store string, fsys StoreFS) string {
	if fsys.Mount.FSType != "ext4" || fsys.Ext4 == nil || !fsys.Ext4.Journal || fsys.Ext4.FastCommit {
		return ""
	}
	return fmt.Sprintf("note: the store %s is on ext4 (%s) without fast commits: every first write to a chunk of the device costs a journal commit on the store. "+
		"Fast commits (or an xfs store) make that far cheaper (figures in the README, Performance): unmount %s and run `tune2fs -O fast_commit %s`",
		store, fsys.Mount.Source, fsys.Mount.MountPoint, fsys.Mount.Source)
}

// InspectStore finds the filesystem store is on (by its st_dev in
// /proc/self/mountinfo) and, for ext4, reads its features from the
// superblock.
func InspectStore(store string) (StoreFS, error) {
	var st unix.Stat_t
	if err := unix.Stat(store, &st); err != nil {
		return StoreFS{}, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return StoreFS{}, err
	}
	ms, err := mountinfo.Parse(f)
	f.Close()
	if err != nil {
		return StoreFS{}, err
	}
	want := mountinfo.Dev{Major: unix.Major(st.Dev), Minor: unix.Minor(st.Dev)}
	var fsys StoreFS
	found := false
	for _, m := range ms { // the last mount of a device is the visible one
		if m.Dev == want {
			fsys.Mount, found = m, true
		}
	}
	if !found {
		return StoreFS{}, fmt.Errorf("%s: no mount of device %s in /proc/self/mountinfo", store, want)
	}
	if fsys.Mount.FSType != "ext4" {
		return fsys, nil
	}
	feat, err := readExt4Super(fsys.Mount.Source, want)
	if err != nil {
		return fsys, err
	}
	fsys.Ext4 = &feat
	return fsys, nil
}

// readExt4Super reads the superblock of the ext4 filesystem on dev: from
// the mount's source path when that is dev's node, else from /dev/NAME
// as sysfs names it.
func readExt4Super(source string, dev mountinfo.Dev) (session.ExtJournal, error) {
	path := source
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != dev.Major || unix.Minor(st.Rdev) != dev.Minor {
		b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/uevent", dev.Major, dev.Minor))
		if err != nil {
			return session.ExtJournal{}, err
		}
		path = ""
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, "DEVNAME="); ok {
				path = "/dev/" + name
			}
		}
		if path == "" {
			return session.ExtJournal{}, errors.New("no DEVNAME for device " + dev.String())
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return session.ExtJournal{}, err
	}
	defer f.Close()
	j, err := session.ProbeExtJournal(f)
	if err != nil {
		return j, fmt.Errorf("%s: %w", path, err)
	}
	return j, nil
}
