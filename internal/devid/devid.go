// Package devid tells one block device from every other one across
// reboots, where its major:minor may change (two identical disks found in
// the other order, a loop device bound to another file): what the kernel
// shows in sysfs about the hardware or the object behind the device.
//
//   - a disk: its WWN (wwid) and serial number (virtio's serial, SCSI/ATA's
//     VPD page 0x80, NVMe's serial);
//   - a partition: its PARTUUID (read from the GPT entry or the MBR disk
//     signature), number, start and size, and the disk's identity;
//   - a loop device: its backing file (device and inode, the path as a
//     hint), offset and size limit;
//   - a device-mapper device: its DM UUID (LVM puts the LV's UUID there).
//
// A device with none of these (an MD array, an NBD, a disk without serial
// or WWN) has no stable identity: Match refuses it rather than guess.
//
// It reads sysfs and the partition table only; it needs no udev.
package devid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kinds of device.
const (
	KindDisk      = "disk"
	KindPartition = "partition"
	KindLoop      = "loop"
	KindDM        = "dm"
	KindOther     = "other"
)

// ID is what identifies a block device beyond its number.
type ID struct {
	Kind string `json:"kind"`
	// Disk: world-wide name and serial number, as the kernel shows them.
	WWN    string `json:"wwn,omitempty"`
	Serial string `json:"serial,omitempty"`
	// Partition: the partition's UUID (GPT unique partition GUID, or the
	// MBR disk signature and number as "SSSSSSSS-NN"), its number, and its
	// start and size in 512-byte sectors; Disk is the disk's identity.
	PartUUID   string `json:"part_uuid,omitempty"`
	PartNumber int    `json:"part_number,omitempty"`
	Start      uint64 `json:"start,omitempty"`
	Sectors    uint64 `json:"sectors,omitempty"`
	Disk       *ID    `json:"disk,omitempty"`
	// Loop device: the backing file (path when bound, and its st_dev and
	// inode, which survive a rename) and the window of it the device shows.
	LoopFile      string `json:"loop_file,omitempty"`
	LoopFileDev   uint64 `json:"loop_file_dev,omitempty"`
	LoopFileInode uint64 `json:"loop_file_inode,omitempty"`
	LoopOffset    uint64 `json:"loop_offset,omitempty"`
	LoopSizeLimit uint64 `json:"loop_size_limit,omitempty"`
	// Device-mapper device: its UUID (LVM: "LVM-" + VG and LV UUIDs).
	DMUUID string `json:"dm_uuid,omitempty"`
}

// Stable reports whether id holds something that names the device and no
// other: without it, Match refuses.
func (id ID) Stable() bool {
	switch id.Kind {
	case KindDisk:
		return id.WWN != "" || id.Serial != ""
	case KindPartition:
		return id.PartUUID != "" || (id.Disk != nil && id.Disk.Stable())
	case KindLoop:
		return id.LoopFileInode != 0
	case KindDM:
		return id.DMUUID != ""
	}
	return false
}

// String describes id for messages.
func (id ID) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+" "+v)
		}
	}
	switch id.Kind {
	case KindDisk:
		add("WWN", id.WWN)
		add("serial", id.Serial)
	case KindPartition:
		add("PARTUUID", id.PartUUID)
		parts = append(parts, fmt.Sprintf("partition %d at sector %d", id.PartNumber, id.Start))
		if id.Disk != nil {
			parts = append(parts, "of the disk with "+id.Disk.String())
		}
	case KindLoop:
		add("backing file", id.LoopFile)
		if id.LoopFileInode != 0 {
			parts = append(parts, fmt.Sprintf("inode %d on device %d:%d", id.LoopFileInode, unix.Major(id.LoopFileDev), unix.Minor(id.LoopFileDev)))
		}
		if id.LoopOffset != 0 {
			parts = append(parts, fmt.Sprintf("offset %d", id.LoopOffset))
		}
	case KindDM:
		add("DM UUID", id.DMUUID)
	}
	if len(parts) == 0 {
		return id.Kind + " device with no stable identity"
	}
	return id.Kind + " with " + strings.Join(parts, ", ")
}

// ErrMismatch: the device found is not the one recorded.
var ErrMismatch = errors.New("another device")

// ErrNoIdentity: the recorded device had no stable identity, so no device
// found can be shown to be it.
var ErrNoIdentity = errors.New("no stable identity")

// Match reports whether found (read now) is the device id was recorded
// from: the same kind and every recorded identifier equal. A recorded id
// that is not Stable is ErrNoIdentity; a difference is ErrMismatch, saying
// what differs.
func (id ID) Match(found ID) error {
	if !id.Stable() {
		return fmt.Errorf("the device was recorded as a %s: %w", id, ErrNoIdentity)
	}
	if id.Kind != found.Kind {
		return fmt.Errorf("it was a %s, this is a %s device: %w", id.Kind, found.Kind, ErrMismatch)
	}
	differ := func(what, want, got string) error {
		if got == "" {
			got = "none"
		}
		return fmt.Errorf("its %s is %s, was %s: %w", what, got, want, ErrMismatch)
	}
	switch id.Kind {
	case KindDisk:
		if id.WWN != "" && id.WWN != found.WWN {
			return differ("WWN", id.WWN, found.WWN)
		}
		if id.Serial != "" && id.Serial != found.Serial {
			return differ("serial", id.Serial, found.Serial)
		}
	case KindPartition:
		if id.PartUUID != "" && !strings.EqualFold(id.PartUUID, found.PartUUID) {
			return differ("PARTUUID", id.PartUUID, found.PartUUID)
		}
		if id.PartNumber != found.PartNumber || id.Start != found.Start || id.Sectors != found.Sectors {
			return fmt.Errorf("it is partition %d at sector %d (%d sectors), was partition %d at sector %d (%d sectors): %w",
				found.PartNumber, found.Start, found.Sectors, id.PartNumber, id.Start, id.Sectors, ErrMismatch)
		}
		if id.Disk != nil && id.Disk.Stable() {
			if found.Disk == nil {
				return fmt.Errorf("its disk cannot be identified: %w", ErrMismatch)
			}
			if err := id.Disk.Match(*found.Disk); err != nil {
				return fmt.Errorf("on another disk: %w", err)
			}
		}
	case KindLoop:
		if id.LoopFileDev != found.LoopFileDev || id.LoopFileInode != found.LoopFileInode {
			return fmt.Errorf("its backing file is %s (inode %d), was %s (inode %d): %w",
				orNone(found.LoopFile), found.LoopFileInode, id.LoopFile, id.LoopFileInode, ErrMismatch)
		}
		if id.LoopOffset != found.LoopOffset || id.LoopSizeLimit != found.LoopSizeLimit {
			return fmt.Errorf("it shows bytes %d+%d of its file, was %d+%d: %w",
				found.LoopOffset, found.LoopSizeLimit, id.LoopOffset, id.LoopSizeLimit, ErrMismatch)
		}
	case KindDM:
		if id.DMUUID != found.DMUUID {
			return differ("DM UUID", id.DMUUID, found.DMUUID)
		}
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Reader reads identities from a sysfs tree (Sys, "/sys" on a running
// system) and opens device nodes through Open (nil: os.Open of /dev/NAME)
// to read partition tables.
type Reader struct {
	Sys  string
	Open func(name string) (io.ReaderAt, io.Closer, error)
}

// Read returns the identity of block device major:minor.
func Read(major, minor uint32) (ID, error) {
	return Reader{Sys: "/sys"}.Read(major, minor)
}

// Read returns the identity of block device major:minor.
func (r Reader) Read(major, minor uint32) (ID, error) {
	link := filepath.Join(r.Sys, "dev", "block", fmt.Sprintf("%d:%d", major, minor))
	dir, err := filepath.EvalSymlinks(link)
	if err != nil {
		return ID{}, fmt.Errorf("device %d:%d is not in sysfs: %w", major, minor, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		return r.partition(dir)
	}
	name := filepath.Base(dir)
	switch {
	case exists(filepath.Join(dir, "loop")) || strings.HasPrefix(name, "loop"):
		return loop(dir)
	case exists(filepath.Join(dir, "dm")):
		return ID{Kind: KindDM, DMUUID: readString(filepath.Join(dir, "dm", "uuid"))}, nil
	}
	return r.disk(dir), nil
}

func (r Reader) disk(dir string) ID {
	id := ID{Kind: KindDisk}
	id.WWN = firstOf(filepath.Join(dir, "wwid"), filepath.Join(dir, "device", "wwid"))
	id.Serial = firstOf(filepath.Join(dir, "serial"), filepath.Join(dir, "device", "serial"))
	if id.Serial == "" {
		id.Serial = vpdSerial(filepath.Join(dir, "device", "vpd_pg80"))
	}
	if id.WWN == "" && id.Serial == "" && !exists(filepath.Join(dir, "device")) {
		// No hardware behind it (zram, nbd, md, ...).
		id.Kind = KindOther
	}
	return id
}

func (r Reader) partition(dir string) (ID, error) {
	num, err := readUint(filepath.Join(dir, "partition"))
	if err != nil {
		return ID{}, fmt.Errorf("%s: partition number: %w", dir, err)
	}
	start, err := readUint(filepath.Join(dir, "start"))
	if err != nil {
		return ID{}, fmt.Errorf("%s: start: %w", dir, err)
	}
	size, err := readUint(filepath.Join(dir, "size"))
	if err != nil {
		return ID{}, fmt.Errorf("%s: size: %w", dir, err)
	}
	diskDir := filepath.Dir(dir)
	disk := r.disk(diskDir)
	id := ID{Kind: KindPartition, PartNumber: int(num), Start: start, Sectors: size, Disk: &disk}
	if u, err := r.partUUID(filepath.Base(diskDir), diskDir, int(num)); err == nil {
		id.PartUUID = u
	}
	return id, nil
}

func (r Reader) partUUID(diskName, diskDir string, num int) (string, error) {
	open := r.Open
	if open == nil {
		open = func(name string) (io.ReaderAt, io.Closer, error) {
			f, err := os.Open("/dev/" + name)
			return f, f, err
		}
	}
	ra, c, err := open(diskName)
	if err != nil {
		return "", err
	}
	defer c.Close()
	lbs, err := readUint(filepath.Join(diskDir, "queue", "logical_block_size"))
	if err != nil || lbs == 0 {
		lbs = 512
	}
	return PartUUID(ra, int64(lbs), num)
}

func loop(dir string) (ID, error) {
	backing := readString(filepath.Join(dir, "loop", "backing_file"))
	id := ID{Kind: KindLoop, LoopFile: backing}
	if backing == "" {
		return id, nil // not bound: no identity
	}
	var st unix.Stat_t
	if err := unix.Stat(backing, &st); err == nil {
		id.LoopFileDev, id.LoopFileInode = st.Dev, st.Ino
	}
	id.LoopOffset, _ = readUint(filepath.Join(dir, "loop", "offset"))
	id.LoopSizeLimit, _ = readUint(filepath.Join(dir, "loop", "sizelimit"))
	return id, nil
}

// PartUUID reads the PARTUUID of partition num (from 1) from the partition
// table of a disk whose logical blocks are lbs bytes: a GPT entry's unique
// partition GUID, or for an MBR the disk signature and the number
// ("1234abcd-01"), as blkid shows them.
func PartUUID(disk io.ReaderAt, lbs int64, num int) (string, error) {
	if num < 1 {
		return "", fmt.Errorf("partition number %d", num)
	}
	hdr := make([]byte, 92)
	if _, err := disk.ReadAt(hdr, lbs); err == nil && string(hdr[:8]) == "EFI PART" {
		entries := binary.LittleEndian.Uint64(hdr[72:])
		count := binary.LittleEndian.Uint32(hdr[80:])
		size := binary.LittleEndian.Uint32(hdr[84:])
		if size < 128 || size > 4096 || uint32(num) > count {
			return "", fmt.Errorf("GPT has %d entries of %d bytes: no partition %d", count, size, num)
		}
		e := make([]byte, 32)
		if _, err := disk.ReadAt(e, int64(entries)*lbs+int64(num-1)*int64(size)); err != nil {
			return "", err
		}
		if bytes.Equal(e[:16], make([]byte, 16)) {
			return "", fmt.Errorf("GPT entry %d is empty", num)
		}
		return guid(e[16:32]), nil
	}
	mbr := make([]byte, 512)
	if _, err := disk.ReadAt(mbr, 0); err != nil {
		return "", err
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return "", errors.New("no GPT and no MBR")
	}
	sig := binary.LittleEndian.Uint32(mbr[440:])
	if sig == 0 {
		return "", errors.New("MBR without a disk signature")
	}
	return fmt.Sprintf("%08x-%02x", sig, num), nil
}

// guid renders a GPT GUID (mixed-endian) as text.
func guid(b []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint16(b[4:]),
		binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:16])
}

// vpdSerial extracts the unit serial number from a SCSI VPD page 0x80.
func vpdSerial(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 4 || b[1] != 0x80 {
		return ""
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if 4+n > len(b) {
		return ""
	}
	return strings.TrimSpace(string(b[4 : 4+n]))
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func readString(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func firstOf(paths ...string) string {
	for _, p := range paths {
		if s := readString(p); s != "" {
			return s
		}
	}
	return ""
}

func readUint(p string) (uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}
