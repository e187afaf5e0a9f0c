// Package filemap finds where a regular file's bytes lie on the block
// device beneath its filesystem (FIEMAP), pins them there and keeps the
// page cache out of the way, so that the kernel may write those blocks
// through the device instead of through the filesystem. dmsnap maps the
// written part of a session's cow.img that way (dm.AttachCOW): the
// snapshot's first writes then cost what they cost on a block device
// (LVM's), not an fsync of a file on a journaling filesystem each.
//
// Writing under a mounted filesystem is safe only for blocks the
// filesystem keeps owning for this file, whose contents it never writes
// itself and never caches. So the package
//   - accepts only filesystems that store file data in place, in blocks of
//     at least a page, and never journal it (Probe: ext2/3/4 without data
//     journaling, xfs outside a realtime device; no encryption,
//     compression, inline data or DAX);
//   - offers only plain extents: written (not unwritten, delayed or
//     shared), aligned, at known device offsets (Extent.Plain);
//   - pins the file immutable while it is mapped (Pin): no write,
//     truncate, hole punch, unlink, rename, defragmentation or
//     deduplication can move, share or free its blocks;
//   - drops the file's page cache and proves with mincore that none is left
//     (DropCache), before the blocks are mapped and again before the file
//     is read through the filesystem after they were.
//
// It knows nothing of device-mapper or of the COW format.
package filemap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/mountinfo"
)

// ErrUnsupported: the file cannot be mapped to its device; the error says
// why (the filesystem, a file flag, a mount option).
var ErrUnsupported = errors.New("file cannot be mapped to its block device")

// ErrCached: pages of the file stayed in the page cache after DropCache.
var ErrCached = errors.New("file pages stay in the page cache")

// FIEMAP (Documentation/filesystems/fiemap.rst). struct fiemap is a 32-byte
// header followed by fm_extent_count struct fiemap_extent of 56 bytes:
//
//	fiemap:        0 u64 fm_start   8 u64 fm_length  16 u32 fm_flags
//	               20 u32 fm_mapped_extents  24 u32 fm_extent_count  28 u32 reserved
//	fiemap_extent: 0 u64 fe_logical  8 u64 fe_physical  16 u64 fe_length
//	               24 u64 reserved[2]  40 u32 fe_flags  44 u32 reserved[3]
const (
	fsIocFiemap     = 0xc020660b // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync  = 0x1        // FIEMAP_FLAG_SYNC: write dirty data back first
	fiemapHeader    = 32
	fiemapExtent    = 56
	fiemapBatch     = 256 // extents asked for per call
	fiemapMaxLength = ^uint64(0)
)

// Extent flags (FIEMAP_EXTENT_*).
const (
	FlagLast          = 0x1
	FlagUnknown       = 0x2
	FlagDelalloc      = 0x4
	FlagEncoded       = 0x8
	FlagDataEncrypted = 0x80
	FlagNotAligned    = 0x100
	FlagDataInline    = 0x200
	FlagDataTail      = 0x400
	FlagUnwritten     = 0x800
	FlagMerged        = 0x1000
	FlagShared        = 0x2000
)

// Extent is one run of a file's bytes: Length bytes at file offset
// Logical lie at byte Physical of the filesystem's block device.
type Extent struct {
	Logical  uint64
	Physical uint64
	Length   uint64
	Flags    uint32
}

// Plain reports whether the kernel may write the extent through the device:
// its data is written and lies at a known, aligned place of its own.
// FlagLast and FlagMerged say nothing about the data.
func (e Extent) Plain() bool { return e.Flags&^(FlagLast|FlagMerged) == 0 }

// End is the file offset just past the extent.
func (e Extent) End() uint64 { return e.Logical + e.Length }

// parseFiemap decodes a FIEMAP reply: the header's fm_mapped_extents
// extents after it. A reply that claims more extents than it holds, or
// extents out of order or overlapping, is an error.
func parseFiemap(buf []byte) ([]Extent, error) {
	if len(buf) < fiemapHeader {
		return nil, fmt.Errorf("fiemap reply of %d bytes, shorter than its %d-byte header", len(buf), fiemapHeader)
	}
	n := binary.LittleEndian.Uint32(buf[20:])
	if uint64(n) > uint64(len(buf)-fiemapHeader)/fiemapExtent {
		return nil, fmt.Errorf("fiemap reply claims %d extents, has room for %d", n, (len(buf)-fiemapHeader)/fiemapExtent)
	}
	out := make([]Extent, 0, n)
	for i := range int(n) {
		b := buf[fiemapHeader+i*fiemapExtent:]
		e := Extent{
			Logical:  binary.LittleEndian.Uint64(b[0:]),
			Physical: binary.LittleEndian.Uint64(b[8:]),
			Length:   binary.LittleEndian.Uint64(b[16:]),
			Flags:    binary.LittleEndian.Uint32(b[40:]),
		}
		if e.Length == 0 || e.End() < e.Logical || e.Physical+e.Length < e.Physical {
			return nil, fmt.Errorf("fiemap extent %d: %d bytes at %d: empty or past 2^64", i, e.Length, e.Logical)
		}
		if i > 0 && e.Logical < out[i-1].End() {
			return nil, fmt.Errorf("fiemap extent %d at %d overlaps or precedes the one before (ending at %d)", i, e.Logical, out[i-1].End())
		}
		out = append(out, e)
	}
	return out, nil
}

// Extents returns every extent of f, in file order, after writing its dirty
// data back (FIEMAP_FLAG_SYNC). Holes are not listed.
func Extents(f *os.File) ([]Extent, error) {
	var out []Extent
	buf := make([]byte, fiemapHeader+fiemapBatch*fiemapExtent)
	start := uint64(0)
	for {
		clear(buf)
		binary.LittleEndian.PutUint64(buf[0:], start)
		binary.LittleEndian.PutUint64(buf[8:], fiemapMaxLength-start)
		binary.LittleEndian.PutUint32(buf[16:], fiemapFlagSync)
		binary.LittleEndian.PutUint32(buf[24:], fiemapBatch)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			return nil, &os.PathError{Op: "fiemap", Path: f.Name(), Err: errno}
		}
		exts, err := parseFiemap(buf)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		if len(out) > 0 && len(exts) > 0 && exts[0].Logical < out[len(out)-1].End() {
			return nil, fmt.Errorf("%s: fiemap went back from %d to %d", f.Name(), out[len(out)-1].End(), exts[0].Logical)
		}
		out = append(out, exts...)
		if len(exts) < fiemapBatch || exts[len(exts)-1].Flags&FlagLast != 0 {
			return out, nil
		}
		start = exts[len(exts)-1].End()
	}
}

// File flags (FS_IOC_GETFLAGS, include/uapi/linux/fs.h).
const (
	flagCompr       = 0x4
	flagImmutable   = 0x10
	flagAppend      = 0x20
	flagEncrypt     = 0x800
	flagJournalData = 0x4000
	flagVerity      = 0x100000
	flagInlineData  = 0x10000000
	flagDax         = 0x02000000
)

// fsxattr (FS_IOC_FSGETXATTR): u32 fsx_xflags first; xfs's realtime flag.
const (
	fsIocFsGetXattr = 0x801c581f // _IOR('X', 31, struct fsxattr)
	xflagRealtime   = 0x1
)

func getFlags(f *os.File) (uint32, error) {
	v, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return 0, &os.PathError{Op: "get file flags", Path: f.Name(), Err: err}
	}
	return v, nil
}

// Device is the block device under a file that Probe accepted.
type Device struct {
	Major, Minor uint32
	FSType       string // "ext4" (ext2/3/4) or "xfs"
	BlockSize    int64  // the filesystem's block size
}

// Probe checks that f's blocks may be written through its filesystem's
// block device (see the package comment) and says which device that is. A
// file that may not is ErrUnsupported, with the reason.
func Probe(f *os.File) (Device, error) {
	unsupported := func(format string, args ...any) (Device, error) {
		return Device{}, fmt.Errorf("%s: %s: %w", f.Name(), fmt.Sprintf(format, args...), ErrUnsupported)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return Device{}, &os.PathError{Op: "statfs", Path: f.Name(), Err: err}
	}
	d := Device{BlockSize: sfs.Bsize}
	switch uint32(sfs.Type) {
	case unix.EXT4_SUPER_MAGIC:
		d.FSType = "ext4"
	case unix.XFS_SUPER_MAGIC:
		d.FSType = "xfs"
	default:
		return unsupported("filesystem type 0x%x is not ext2/3/4 or xfs", sfs.Type)
	}
	if page := int64(os.Getpagesize()); d.BlockSize < page || d.BlockSize%page != 0 {
		return unsupported("%s block size %d is not a multiple of the page size %d", d.FSType, d.BlockSize, page)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Device{}, &os.PathError{Op: "stat", Path: f.Name(), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return unsupported("not a regular file")
	}
	d.Major, d.Minor = unix.Major(st.Dev), unix.Minor(st.Dev)
	if d.Major == 0 {
		return unsupported("its filesystem is on no block device (%d:%d)", d.Major, d.Minor)
	}
	flags, err := getFlags(f)
	if err != nil {
		return Device{}, err
	}
	for _, bad := range []struct {
		flag uint32
		what string
	}{
		{flagEncrypt, "encrypted"}, {flagCompr, "compressed"}, {flagInlineData, "stored inline"},
		{flagDax, "DAX"}, {flagVerity, "a verity file"}, {flagJournalData, "data-journaled (chattr +j)"},
	} {
		if flags&bad.flag != 0 {
			return unsupported("the file is %s", bad.what)
		}
	}
	if d.FSType == "xfs" {
		var x [28]byte
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFsGetXattr, uintptr(unsafe.Pointer(&x[0]))); errno != 0 {
			return Device{}, &os.PathError{Op: "get xfs flags", Path: f.Name(), Err: errno}
		}
		if binary.LittleEndian.Uint32(x[:])&xflagRealtime != 0 {
			return unsupported("the file lies on the xfs realtime device")
		}
	}
	if opts, err := mountOptions(d.Major, d.Minor); err != nil {
		return Device{}, err
	} else if bad := badMountOption(opts); bad != "" {
		return unsupported("its filesystem is mounted with %s", bad)
	}
	return d, nil
}

// badMountOption returns the first superblock or mount option under which
// the filesystem writes file data other than in place: data journaling
// (replayed after a crash over what was written beneath it) or DAX.
func badMountOption(opts []string) string {
	for _, o := range opts {
		if o == "data=journal" || o == "dax" || strings.HasPrefix(o, "dax=") && o != "dax=never" {
			return o
		}
	}
	return ""
}

const selfMountInfo = "/proc/self/mountinfo"

// mountOptions returns the mount and superblock options of the filesystem
// on device major:minor, from /proc/self/mountinfo.
func mountOptions(major, minor uint32) ([]string, error) {
	f, err := os.Open(selfMountInfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ms, err := mountinfo.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", selfMountInfo, err)
	}
	for _, m := range ms {
		if m.Dev.Major == major && m.Dev.Minor == minor {
			return append(strings.Split(m.Options, ","), strings.Split(m.SuperOptions, ",")...), nil
		}
	}
	return nil, fmt.Errorf("device %d:%d is in no mount of %s: %w", major, minor, selfMountInfo, ErrUnsupported)
}

// Pin sets or clears the file's immutable flag (FS_IMMUTABLE_FL, chattr
// +i). While it is set the file's blocks stay where Extents found them:
// nobody can write, truncate, punch, unlink or rename it, and neither
// defragmentation (EXT4_IOC_MOVE_EXT) nor deduplication (FIDEDUPERANGE,
// whose generic checks refuse only immutable and swap files) can move or
// share them. The append-only flag (+a), which older dmsnap versions set,
// does not stop either: xfs dedupes an append-only file through a
// read-only descriptor, and ext4's MOVE_EXT checks only the donor's flag.
// It needs CAP_LINUX_IMMUTABLE. Clearing also clears +a.
func Pin(f *os.File, on bool) error {
	flags, err := getFlags(f)
	if err != nil {
		return err
	}
	want := flags &^ (flagImmutable | flagAppend)
	if on {
		want |= flagImmutable
	}
	if want == flags {
		return nil
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(want)); err != nil {
		what := "clear the immutable flag of"
		if on {
			what = "set the immutable flag of"
		}
		return &os.PathError{Op: what, Path: f.Name(), Err: err}
	}
	return nil
}

// Pinned reports whether the file's immutable flag is set.
func Pinned(f *os.File) (bool, error) {
	flags, err := getFlags(f)
	return flags&flagImmutable != 0, err
}

// Unpin clears f's immutable and append-only flags if it has them: done
// before dmsnap writes, renames, punches or removes a COW file it once
// mapped. A filesystem without file flags never pinned it.
func Unpin(f *os.File) error {
	flags, err := getFlags(f)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	if err != nil || flags&(flagImmutable|flagAppend) == 0 {
		return err
	}
	return Pin(f, false)
}

// UnpinPath is Unpin of the file at path; a missing file is fine.
func UnpinPath(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	return Unpin(f)
}

// DropCache writes f's dirty pages back, asks the kernel to drop its
// cached pages and checks with mincore that none is left in the file's data
// (holes are skipped: SEEK_DATA). Pages can stay behind when someone reads
// the file meanwhile; it tries a few times, then returns ErrCached with
// the first offset still cached.
func DropCache(f *os.File) error {
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	var at int64
	for try := range 4 {
		if try > 0 {
			time.Sleep(time.Duration(try) * 20 * time.Millisecond)
		}
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return &os.PathError{Op: "fadvise", Path: f.Name(), Err: err}
		}
		var err error
		at, err = firstCached(f)
		if err != nil {
			return err
		}
		if at < 0 {
			return nil
		}
	}
	return fmt.Errorf("%s: the page at byte %d is still cached after dropping the cache: %w", f.Name(), at, ErrCached)
}

// mincoreWindow is how much of the file firstCached maps at a time.
const mincoreWindow = 1 << 30

// firstCached returns the offset of the first page of f's data in the
// page cache, or -1.
func firstCached(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	page := int64(os.Getpagesize())
	vec := make([]byte, mincoreWindow/page)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return -1, nil // no data after off
		}
		if err != nil {
			return 0, &os.PathError{Op: "seek data", Path: f.Name(), Err: err}
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return 0, &os.PathError{Op: "seek hole", Path: f.Name(), Err: err}
		}
		for w := data / page * page; w < hole; w += mincoreWindow {
			n := min(hole-w, mincoreWindow)
			at, err := cachedIn(f, w, n, vec)
			if err != nil || at >= 0 {
				return at, err
			}
		}
		off = hole
	}
	return -1, nil
}

// cachedIn maps n bytes of f at off (page-aligned) and returns the offset of
// the first cached page among them, or -1.
func cachedIn(f *os.File, off, n int64, vec []byte) (int64, error) {
	m, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, &os.PathError{Op: "mmap", Path: f.Name(), Err: err}
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	pages := (n + page - 1) / page
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return 0, &os.PathError{Op: "mincore", Path: f.Name(), Err: errno}
	}
	for i := range pages {
		if vec[i]&1 != 0 {
			return off + i*page, nil
		}
	}
	return -1, nil
}
