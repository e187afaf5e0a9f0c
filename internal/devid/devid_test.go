package devid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func link(t *testing.T, sys, devnum, target string) {
	t.Helper()
	p := filepath.Join(sys, "dev", "block", devnum)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(sys, target), p); err != nil {
		t.Fatal(err)
	}
}

// gptDisk returns a disk image whose GPT (512-byte blocks) has partition 2
// with the given unique GUID bytes.
func gptDisk(unique [16]byte) []byte {
	img := make([]byte, 64<<10)
	copy(img[512:], "EFI PART")
	binary.LittleEndian.PutUint64(img[512+72:], 2) // entries at LBA 2
	binary.LittleEndian.PutUint32(img[512+80:], 128)
	binary.LittleEndian.PutUint32(img[512+84:], 128)
	e := 1024 + 128 // entry 2
	copy(img[e:], bytes.Repeat([]byte{0xaf}, 16))
	copy(img[e+16:], unique[:])
	return img
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

func TestRead(t *testing.T) {
	sys := t.TempDir()
	// A virtio disk with a serial and its partition 2.
	write(t, sys, "devices/pci0/virtio1/block/vda/serial", "DMSNAP-DISK-1\n")
	write(t, sys, "devices/pci0/virtio1/block/vda/device/vendor", "0x1af4\n")
	write(t, sys, "devices/pci0/virtio1/block/vda/queue/logical_block_size", "512\n")
	write(t, sys, "devices/pci0/virtio1/block/vda/vda2/partition", "2\n")
	write(t, sys, "devices/pci0/virtio1/block/vda/vda2/start", "2048\n")
	write(t, sys, "devices/pci0/virtio1/block/vda/vda2/size", "4096\n")
	link(t, sys, "254:0", "devices/pci0/virtio1/block/vda")
	link(t, sys, "254:2", "devices/pci0/virtio1/block/vda/vda2")
	// A loop device over a file, and a device-mapper device.
	back := filepath.Join(t.TempDir(), "image.img")
	if err := os.WriteFile(back, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	write(t, sys, "devices/virtual/block/loop3/loop/backing_file", back+"\n")
	write(t, sys, "devices/virtual/block/loop3/loop/offset", "0\n")
	write(t, sys, "devices/virtual/block/loop3/loop/sizelimit", "0\n")
	link(t, sys, "7:3", "devices/virtual/block/loop3")
	write(t, sys, "devices/virtual/block/dm-2/dm/uuid", "LVM-abcdef\n")
	link(t, sys, "253:2", "devices/virtual/block/dm-2")
	write(t, sys, "devices/virtual/block/zram0/size", "1\n")
	link(t, sys, "252:0", "devices/virtual/block/zram0")

	unique := [16]byte{0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0x78, 0x56, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78}
	r := Reader{Sys: sys, Open: func(name string) (io.ReaderAt, io.Closer, error) {
		if name != "vda" {
			t.Fatalf("opened %s, want the disk vda", name)
		}
		return bytes.NewReader(gptDisk(unique)), nopCloser{}, nil
	}}
	disk, err := r.Read(254, 0)
	if err != nil || disk.Kind != KindDisk || disk.Serial != "DMSNAP-DISK-1" || !disk.Stable() {
		t.Fatalf("disk: %+v %v", disk, err)
	}
	part, err := r.Read(254, 2)
	if err != nil {
		t.Fatal(err)
	}
	if part.Kind != KindPartition || part.PartNumber != 2 || part.Start != 2048 || part.Sectors != 4096 ||
		part.PartUUID != "12345678-1234-5678-9abc-def012345678" || part.Disk == nil || part.Disk.Serial != "DMSNAP-DISK-1" {
		t.Fatalf("partition: %+v", part)
	}
	lp, err := r.Read(7, 3)
	if err != nil || lp.Kind != KindLoop || lp.LoopFile != back || lp.LoopFileInode == 0 || !lp.Stable() {
		t.Fatalf("loop: %+v %v", lp, err)
	}
	dmid, err := r.Read(253, 2)
	if err != nil || dmid.Kind != KindDM || dmid.DMUUID != "LVM-abcdef" {
		t.Fatalf("dm: %+v %v", dmid, err)
	}
	z, err := r.Read(252, 0)
	if err != nil || z.Stable() {
		t.Fatalf("zram: %+v %v, want no stable identity", z, err)
	}
	if _, err := r.Read(9, 9); err == nil {
		t.Fatal("a device not in sysfs was read")
	}
}

func TestPartUUIDMBR(t *testing.T) {
	img := make([]byte, 4096)
	binary.LittleEndian.PutUint32(img[440:], 0x1234abcd)
	img[510], img[511] = 0x55, 0xaa
	got, err := PartUUID(bytes.NewReader(img), 512, 3)
	if err != nil || got != "1234abcd-03" {
		t.Fatalf("PartUUID = %q, %v", got, err)
	}
	if _, err := PartUUID(bytes.NewReader(make([]byte, 4096)), 512, 1); err == nil {
		t.Fatal("a disk without a partition table gave a PARTUUID")
	}
}

func TestMatch(t *testing.T) {
	disk := ID{Kind: KindDisk, Serial: "S1"}
	part := ID{Kind: KindPartition, PartUUID: "aa-01", PartNumber: 1, Start: 2048, Sectors: 100, Disk: &disk}
	loopA := ID{Kind: KindLoop, LoopFile: "/a.img", LoopFileDev: 30, LoopFileInode: 12}
	for _, tc := range []struct {
		name      string
		rec, seen ID
		want      error
	}{
		{"same disk", disk, ID{Kind: KindDisk, Serial: "S1", WWN: "w"}, nil},
		{"other serial", disk, ID{Kind: KindDisk, Serial: "S2"}, ErrMismatch},
		{"no serial now", disk, ID{Kind: KindDisk}, ErrMismatch},
		{"a loop instead", disk, loopA, ErrMismatch},
		{"same partition", part, part, nil},
		{"partition moved", part, ID{Kind: KindPartition, PartUUID: "aa-01", PartNumber: 1, Start: 4096, Sectors: 100, Disk: &disk}, ErrMismatch},
		{"partition on another disk", part, ID{Kind: KindPartition, PartUUID: "aa-01", PartNumber: 1, Start: 2048, Sectors: 100, Disk: &ID{Kind: KindDisk, Serial: "S9"}}, ErrMismatch},
		{"other PARTUUID", part, ID{Kind: KindPartition, PartUUID: "bb-01", PartNumber: 1, Start: 2048, Sectors: 100, Disk: &disk}, ErrMismatch},
		{"same loop file under another name", loopA, ID{Kind: KindLoop, LoopFile: "/b.img", LoopFileDev: 30, LoopFileInode: 12}, nil},
		{"loop over another file", loopA, ID{Kind: KindLoop, LoopFile: "/a.img", LoopFileDev: 30, LoopFileInode: 13}, ErrMismatch},
		{"loop at another offset", loopA, ID{Kind: KindLoop, LoopFileDev: 30, LoopFileInode: 12, LoopOffset: 512}, ErrMismatch},
		{"recorded without identity", ID{Kind: KindOther}, ID{Kind: KindOther}, ErrNoIdentity},
		{"recorded disk without serial", ID{Kind: KindDisk}, ID{Kind: KindDisk}, ErrNoIdentity},
	} {
		err := tc.rec.Match(tc.seen)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: Match = %v, want %v", tc.name, err, tc.want)
		}
		if err != nil && !strings.Contains(err.Error(), "was") && !errors.Is(err, ErrNoIdentity) && tc.name != "a loop instead" {
			t.Errorf("%s: %q does not say what was recorded", tc.name, err)
		}
	}
}
