// Package mountinfo parses /proc/<pid>/mountinfo (proc(5)), the one parser
// of the mount table that package dm (is a device mounted?) and package
// session (the mount watcher) both use, and resolves the device numbers of
// filesystems that show an anonymous one (btrfs). It reads and decodes; it
// decides nothing about dmsnap's devices.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/dmsnap/dmsnap/internal/devnum"
)

// Dev is a device number, major:minor (internal/devnum, the one type
// dm.Dev and session.DevNum are too).
type Dev = devnum.Dev

// Mount is one line of /proc/<pid>/mountinfo:
//
//	36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//	(1)(2) (3)   (4)   (5)          (6)      (7)   (8) (9)    (10)         (11)
//
// Paths (root, mount point, source) and the filesystem type are written by
// the kernel with space, tab, newline and backslash as octal escapes
// (\040, \011, \012, \134); Mount holds them decoded.
type Mount struct {
	ID           int      // (1) unique mount ID
	ParentID     int      // (2)
	Dev          Dev      // (3) st_dev of the filesystem: the block device for a block-backed one (not for btrfs)
	Root         string   // (4) the subtree mounted ("/" unless a bind mount of a subdirectory)
	MountPoint   string   // (5)
	Options      string   // (6) per-mount options
	Optional     []string // (7) "shared:N", "master:N", ... (zero or more)
	FSType       string   // (9) "ext4", "fuse.sshfs", ...
	Source       string   // (10) "/dev/mapper/dmsnap-sdb1", "tmpfs", "none", ...
	SuperOptions string   // (11) per-superblock options
}

// maxLine bounds one line: two paths of PATH_MAX, escaped (×4), and the
// rest.
const maxLine = 64 << 10

// Parse parses a mountinfo table. A malformed line is an error naming its
// line number; nothing is returned then, since a caller acting on half a
// table would see every mount after the bad line as unmounted.
func Parse(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		m, err := ParseLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w: %q", n, err, clip(line, 200))
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

// ParseLine parses one line (without its newline).
func ParseLine(line string) (Mount, error) {
	// The kernel separates fields with exactly one space and escapes the
	// spaces inside them, so splitting on ' ' is exact.
	f := strings.Split(line, " ")
	if len(f) < 10 {
		return Mount{}, fmt.Errorf("%d fields, want at least 10", len(f))
	}
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 {
		return Mount{}, fmt.Errorf("no \" - \" separator after the optional fields")
	}
	if len(f) != sep+4 {
		return Mount{}, fmt.Errorf("%d fields after the separator, want 3 (type, source, super options)", len(f)-sep-1)
	}
	var m Mount
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil || m.ID < 0 {
		return Mount{}, fmt.Errorf("mount ID %q is not a number", f[0])
	}
	if m.ParentID, err = strconv.Atoi(f[1]); err != nil || m.ParentID < 0 {
		return Mount{}, fmt.Errorf("parent ID %q is not a number", f[1])
	}
	if m.Dev, err = ParseDev(f[2]); err != nil {
		return Mount{}, err
	}
	for i, name := range []string{"root", "mount point", "options"} {
		if f[3+i] == "" {
			return Mount{}, fmt.Errorf("empty %s", name)
		}
	}
	if f[sep+1] == "" {
		return Mount{}, fmt.Errorf("empty filesystem type")
	}
	m.Root = unescape(f[3])
	m.MountPoint = unescape(f[4])
	m.Options = f[5]
	for _, o := range f[6:sep] {
		if o != "" {
			m.Optional = append(m.Optional, o)
		}
	}
	m.FSType = unescape(f[sep+1])
	m.Source = unescape(f[sep+2])
	m.SuperOptions = f[sep+3]
	return m, nil
}

// ParseDev parses "major:minor" in decimal (as in mountinfo and
// device-mapper tables).
func ParseDev(s string) (Dev, error) { return devnum.Parse(s) }

// unescape decodes the kernel's \ooo escapes (seq_escape/mangle). A
// backslash not followed by three octal digits giving a byte is kept as is.
func unescape(s string) string {
	i := strings.IndexByte(s, '\\')
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			if s[i+1] <= '3' { // \400 and above are not a byte
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(c)
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// escape is the kernel's escaping of a mountinfo field: space, tab, newline
// and backslash as \ooo.
func escape(s string) string {
	if !strings.ContainsAny(s, " \t\n\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Line renders m as the kernel writes it in mountinfo (without the newline).
func (m Mount) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %d %s %s %s %s", m.ID, m.ParentID, m.Dev, escape(m.Root), escape(m.MountPoint), m.Options)
	for _, o := range m.Optional {
		b.WriteString(" ")
		b.WriteString(o)
	}
	fmt.Fprintf(&b, " - %s %s %s", escape(m.FSType), escape(m.Source), m.SuperOptions)
	return b.String()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// sourceIsDevice holds the filesystems whose mountinfo source is a block
// device they are on although the device number they report is not that
// device's. btrfs is the one: a filesystem may span several devices, so
// each mount gets an anonymous number (major 0), and the source is the path
// of one of its devices, written by the kernel (btrfs_show_devname), which
// opened it to mount. Every other filesystem that reports an anonymous
// number (tmpfs, overlay, FUSE, NFS, proc, ...) shows as its source
// whatever string the mounter gave it: `mount -t tmpfs /dev/mapper/x /mnt`,
// or FUSE's fsname, which an unprivileged user chooses. Such a source names
// no device the filesystem is on, and taking it for one would let anyone
// who can mount FUSE make a device look mounted: restore would refuse it
// and the watcher would open and close sessions on it.
var sourceIsDevice = map[string]bool{"btrfs": true}

// SourceIsDevice reports whether a mount of filesystem type fstype names,
// as its source, the block device the filesystem is on (see
// sourceIsDevice): the only mounts whose source may be resolved to a
// device.
func SourceIsDevice(fstype string) bool { return sourceIsDevice[fstype] }

// ResolveSourceDevs replaces the device number of mounts whose filesystem
// reports an anonymous one (major 0: btrfs gives every mount such a number,
// not its block device's) with the number of the block device named as the
// mount's source, when the source is one and the filesystem is one whose
// source is its device (SourceIsDevice: btrfs, never tmpfs, FUSE or
// overlay). Without it a btrfs mount of a device is not recognised as one.
// blockDev returns the number of the block device at a path, and an error
// for anything else.
func ResolveSourceDevs(ms []Mount, blockDev func(path string) (Dev, error)) []Mount {
	for i := range ms {
		if ms[i].Dev.Major != 0 || !SourceIsDevice(ms[i].FSType) || !strings.HasPrefix(ms[i].Source, "/dev/") {
			continue
		}
		if n, err := blockDev(ms[i].Source); err == nil {
			ms[i].Dev = n
		}
	}
	return ms
}
