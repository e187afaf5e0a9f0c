package dm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Loop devices hold the COW files. They are set up with LOOP_CONFIGURE
// (Linux 5.8+), which binds the file and sets flags in one call.

const (
	loopControlPath = "/dev/loop-control"
	loopMajor       = 7
	// configureTries bounds the race with another process that takes the
	// free loop device between LOOP_CTL_GET_FREE and LOOP_CONFIGURE.
	configureTries = 8
)

// loopControlMisc is the fixed misc number of /dev/loop-control.
var loopControlMisc = Dev{Major: 10, Minor: 237}

// LoopOptions are the flags of a new loop device.
type LoopOptions struct {
	// AutoClear detaches the loop device when its last opener closes it.
	// Device-mapper counts as an opener: attach, load the table that uses
	// it, Close the Loop, and the loop device goes away by itself when the
	// table is removed.
	AutoClear bool
	// DirectIO asks the loop driver to bypass the page cache of the backing
	// file. The kernel silently drops it when the backing file system or
	// the alignment does not allow it (for instance a 512-byte loop block
	// size over a file system with 4 KiB blocks); Loop.DirectIO says whether
	// it took.
	DirectIO bool
	// BlockSize is the loop device's logical block size in bytes; 0 keeps
	// the kernel default (512). Direct I/O usually needs it at least as
	// large as the backing file system's block size.
	BlockSize uint32
	ReadOnly  bool
	// BlockDevice allows a block device as the backing file (the loop
	// device over a store's device, see AttachCOW); without it anything but
	// a regular file is refused.
	BlockDevice bool
	// Offset and SizeLimit (bytes; 0: to the end) limit the loop device to
	// a window of its backing file.
	Offset, SizeLimit uint64
	// WriteThrough makes every write durable when it completes (the
	// backing file is opened O_DSYNC, which the loop driver honours for
	// buffered I/O) and tells the block layer so (queue/write_cache "write
	// through"): flushes sent to the device then complete at once, without
	// reaching the driver. For the loop device over a COW's tail file
	// (AttachCOW), which device-mapper sends every flush of the exception
	// store to although it is written only when the mapped part runs out.
	// Direct I/O is not used with it: the driver drops O_DSYNC for direct
	// I/O.
	WriteThrough bool
}

// Loop is a bound loop device. While it came from AttachLoop it holds an
// open descriptor of the device: Close releases it (with AutoClear, the last
// close detaches the device).
type Loop struct {
	Path      string // /dev/loopN
	Number    int
	Dev       Dev
	Backing   string // backing file path as the kernel reports it
	DirectIO  bool   // direct I/O is in effect (/sys/block/loopN/loop/dio)
	AutoClear bool
	// Offset and SizeLimit are the window of the backing file the loop
	// device shows (bytes; SizeLimit 0: to the end).
	Offset, SizeLimit uint64
	// WriteThrough: the device has no volatile write cache (its queue's
	// write_cache is "write through"; LoopOptions.WriteThrough).
	WriteThrough bool
	release      func() error
}

// Close releases the descriptor AttachLoop kept, if any.
func (l *Loop) Close() error {
	if l == nil || l.release == nil {
		return nil
	}
	err := l.release()
	l.release = nil
	return err
}

// WithRelease returns a copy of l whose Close calls release. It is for
// Loops implementations other than System (fakes) that model the
// descriptor AttachLoop keeps.
func (l Loop) WithRelease(release func() error) *Loop {
	l.release = release
	return &l
}

// openBacking opens a loop device's backing file (a variable for the
// tests, which no kernel they run on refuses as 6.8's can).
var openBacking = os.OpenFile

// AttachLoop binds file to a free loop device.
func AttachLoop(file string, opts LoopOptions) (*Loop, error) {
	const op = "attach loop"
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	bflag := flag
	if opts.WriteThrough {
		bflag |= unix.O_DSYNC
		opts.DirectIO = false
	}
	bf, err := openBacking(file, bflag|unix.O_CLOEXEC, 0)
	if err != nil {
		if opts.BlockDevice && !opts.ReadOnly {
			if werr := mountedWriteRefused(op, file, err); werr != nil {
				return nil, werr
			}
		}
		return nil, newError(op, file, err, "")
	}
	defer bf.Close()
	if fi, err := bf.Stat(); err != nil {
		return nil, newError(op, file, err, "")
	} else if !fi.Mode().IsRegular() && !(opts.BlockDevice && fi.Mode().Type() == fs.ModeDevice) {
		return nil, errorf(op, file, nil, "give a regular file", "%s is not a regular file", file)
	}
	ctl, err := openLoopControl()
	if err != nil {
		return nil, err
	}
	defer ctl.Close()

	cfg := unix.LoopConfig{Fd: uint32(bf.Fd()), Size: opts.BlockSize}
	cfg.Info.Flags = loopFlags(opts)
	cfg.Info.Offset, cfg.Info.Sizelimit = opts.Offset, opts.SizeLimit
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], file)

	var lastErr error
	for range configureTries {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, newError(op, file, err, "no free loop device: detach unused ones (see /sys/block/loop*/loop/backing_file)")
		}
		path := fmt.Sprintf("%s/loop%d", devDir, n)
		lf, err := openLoopDevice(n, flag)
		if err != nil {
			return nil, newError(op, path, err, "")
		}
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if errors.Is(err, unix.EBUSY) {
			// Someone else bound it first; ask for another.
			lf.Close()
			lastErr = err
			continue
		}
		if err != nil {
			lf.Close()
			return nil, newError(op, file, err, "")
		}
		if opts.WriteThrough {
			// Nothing is written before the caller loads a table over it.
			wc := fmt.Sprintf("%s/block/loop%d/queue/write_cache", sysDir, n)
			if err := os.WriteFile(wc, []byte("write through"), 0); err != nil {
				unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
				lf.Close()
				return nil, newError(op, path, err, "")
			}
		}
		l, err := loopInfo(sysDir, n)
		if err != nil {
			lf.Close()
			return nil, newError(op, path, err, "")
		}
		l.release = lf.Close
		return l, nil
	}
	return nil, newError(op, file, lastErr, "loop devices kept being taken by someone else: retry")
}

func loopFlags(o LoopOptions) uint32 {
	var f uint32
	if o.AutoClear {
		f |= unix.LO_FLAGS_AUTOCLEAR
	}
	if o.DirectIO {
		f |= unix.LO_FLAGS_DIRECT_IO
	}
	if o.ReadOnly {
		f |= unix.LO_FLAGS_READ_ONLY
	}
	return f
}

func openLoopControl() (*os.File, error) {
	dev := loopControlMisc
	if d, err := readSysDev(sysDir + "/class/misc/loop-control/dev"); err == nil {
		dev = d
	}
	if err := ensureNode(loopControlPath, unix.S_IFCHR, dev, false); err != nil {
		return nil, newError("create loop control node", loopControlPath, err, "")
	}
	f, err := os.OpenFile(loopControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, newError("open", loopControlPath, err, "load the loop module (modprobe loop)")
	}
	return f, nil
}

// openLoopDevice opens /dev/loopN, creating the node from sysfs when devtmpfs
// has not.
func openLoopDevice(n int, flag int) (*os.File, error) {
	path := fmt.Sprintf("%s/loop%d", devDir, n)
	dev, err := readSysDev(fmt.Sprintf("%s/block/loop%d/dev", sysDir, n))
	if err != nil {
		dev = Dev{Major: loopMajor, Minor: uint32(n)}
	}
	if err := ensureNode(path, unix.S_IFBLK, dev, false); err != nil {
		return nil, err
	}
	return os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
}

// loopInfo reads a bound loop device's state from sysfs.
func loopInfo(sys string, n int) (*Loop, error) {
	base := fmt.Sprintf("%s/block/loop%d", sys, n)
	dev, err := readSysDev(base + "/dev")
	if err != nil {
		return nil, err
	}
	backing, err := os.ReadFile(base + "/loop/backing_file")
	if err != nil {
		return nil, fmt.Errorf("loop%d is not bound: %w", n, err)
	}
	// Kernels without these files show the whole file: 0 is right then.
	off, _ := readSysUint(base + "/loop/offset")
	limit, _ := readSysUint(base + "/loop/sizelimit")
	return &Loop{
		Path:      fmt.Sprintf("%s/loop%d", devDir, n),
		Number:    n,
		Dev:       dev,
		Backing:   strings.TrimSpace(string(backing)),
		DirectIO:  readFlag(base + "/loop/dio"),
		AutoClear: readFlag(base + "/loop/autoclear"),
		Offset:    off,
		SizeLimit: limit,
		WriteThrough: func() bool {
			b, err := os.ReadFile(base + "/queue/write_cache")
			return err == nil && strings.TrimSpace(string(b)) == "write through"
		}(),
	}, nil
}

func readFlag(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// loopNumber extracts N from /dev/loopN.
func loopNumber(path string) (int, error) {
	base := filepath.Base(path)
	num, ok := strings.CutPrefix(base, "loop")
	if !ok {
		return 0, fmt.Errorf("%s is not a loop device path", path)
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s is not a loop device path", path)
	}
	return n, nil
}

// DetachLoop unbinds a loop device (LOOP_CLR_FD). While the device is still
// open elsewhere (a snapshot table uses it) the kernel only marks it
// auto-clear and detaches it at its last close. A device that is not bound
// is ErrNotFound.
func DetachLoop(path string) error {
	const op = "detach loop"
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return newError(op, path, err, "")
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		e := newError(op, path, err, "")
		if errors.Is(err, unix.ENXIO) {
			e.Hint = "it is not bound to a file"
		}
		return e
	}
	return nil
}

// SetLoopCapacity makes the kernel re-read the size of the loop device's
// backing file (after the file grew) and returns the new size in sectors.
// A snapshot using the device sees the new space at once: the persistent
// store reads its COW size live, no table reload is needed.
func SetLoopCapacity(path string) (uint64, error) {
	const op = "grow loop"
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, newError(op, path, err, "")
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return 0, newError(op, path, err, "")
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, newError(op, path, err, "")
	}
	return uint64(size) / SectorSize, nil
}

// FindLoop returns the loop device bound to file, matched by device and
// inode so that renames of the file or its directory (sessions are renamed
// at mount) do not hide it. No such loop device is ErrNotFound.
func FindLoop(file string) (*Loop, error) {
	loops, err := findLoops(sysDir, file)
	if err != nil {
		return nil, err
	}
	if len(loops) == 0 {
		return nil, &Error{Op: "find loop", Device: file, Kind: ErrNotFound,
			Err: fmt.Errorf("no loop device is bound to %s", file)}
	}
	return loops[0], nil
}

// LoopsOf lists the loop devices bound to file, matched by device and
// inode; none is an empty list.
func LoopsOf(file string) ([]*Loop, error) {
	return findLoops(sysDir, file)
}

// BoundLoops lists every bound loop device.
func BoundLoops() ([]*Loop, error) {
	return boundLoops(sysDir)
}

func boundLoops(sys string) ([]*Loop, error) {
	matches, err := filepath.Glob(sys + "/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var out []*Loop
	for _, m := range matches {
		n, err := loopNumber(filepath.Dir(filepath.Dir(m)))
		if err != nil {
			continue
		}
		l, err := loopInfo(sys, n)
		if errors.Is(err, fs.ErrNotExist) {
			continue // detached meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

func findLoops(sys, file string) ([]*Loop, error) {
	var want unix.Stat_t
	if err := unix.Stat(file, &want); err != nil {
		return nil, newError("find loop", file, err, "")
	}
	loops, err := boundLoops(sys)
	if err != nil {
		return nil, newError("find loop", file, err, "")
	}
	var out []*Loop
	for _, l := range loops {
		var st unix.Stat_t
		if unix.Stat(l.Backing, &st) != nil {
			continue // e.g. "/path (deleted)"
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			out = append(out, l)
		}
	}
	return out, nil
}

// LoopBacking returns the device and inode numbers (as stat(2) gives them:
// st_dev, st_ino) of the file behind block device dev, with ok = false when
// dev is no loop device or is bound to no file. The numbers come from
// LOOP_GET_STATUS64, which names the file the kernel holds open: right
// even where the path sysfs shows (loop/backing_file) is stale or means
// another file (a file deleted and its name reused, another mount
// namespace). Where the device node cannot be asked, that path is stat'ed
// instead.
func LoopBacking(dev Dev) (fileDev, fileIno uint64, ok bool, err error) {
	return loopBacking(sysDir, devDir, dev)
}

func loopBacking(sys, devd string, d Dev) (uint64, uint64, bool, error) {
	const op = "find loop backing file"
	if d.Major != loopMajor {
		return 0, 0, false, nil
	}
	base := filepath.Join(sys, "dev", "block", d.String())
	backing, err := os.ReadFile(filepath.Join(base, "loop", "backing_file"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, false, nil // not bound, or no such device
	}
	if err != nil {
		return 0, 0, false, newError(op, d.String(), err, "")
	}
	// /sys/dev/block/M:m links to .../block/loopN: the node is /dev/loopN,
	// asked only when it is this very device.
	if target, err := os.Readlink(base); err == nil {
		if f, err := os.OpenFile(filepath.Join(devd, filepath.Base(target)), os.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			var st unix.Stat_t
			serr := unix.Fstat(int(f.Fd()), &st)
			if serr == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == d.Number() {
				info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
				f.Close()
				switch {
				case err == nil:
					return info.Device, info.Inode, true, nil
				case errors.Is(err, unix.ENXIO):
					return 0, 0, false, nil // unbound since sysfs was read
				}
			} else {
				f.Close()
			}
		}
	}
	path := strings.TrimSpace(string(backing))
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, false, &Error{Op: op, Device: d.String(), Err: fmt.Errorf("stat %s: %w", path, err),
			Hint: "the kernel's path of the backing file does not resolve (renamed or deleted?)"}
	}
	return st.Dev, st.Ino, true, nil
}
