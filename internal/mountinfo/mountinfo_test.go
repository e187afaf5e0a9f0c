package mountinfo

import (
	"errors"
	"strings"
	"testing"
)

func TestUnescape(t *testing.T) {
	cases := map[string]string{
		`plain`:         "plain",
		`a\040b`:        "a b",
		`\134`:          `\`,
		`\134040`:       `\040`,
		`end\`:          `end\`,
		`\04`:           `\04`,
		`\400`:          `\400`,
		`\08`:           `\08`,
		`\011\012\134`:  "\t\n\\",
		`x\040\040\040`: "x   ",
		`/t\011ab`:      "/t\tab",
		`/back\134sl`:   `/back\sl`,
		`/trail\04`:     `/trail\04`,
		`/bad\999`:      `/bad\999`,
	}
	for in, want := range cases {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// The lines dm and session read differently before they shared this
// parser: dm split on any run of blanks and accepted lines without super
// options; the kernel writes exactly one space between fields.
func TestParseStrict(t *testing.T) {
	for _, bad := range []string{
		"22 1 253:1 / / rw - ext4 /dev/vda\n",        // no super options
		"22 1 253:1 / /  rw - ext4 /dev/vda rw\n",    // two spaces: an empty field
		"22 1 253:1 / / rw - ext4 /dev/vda rw x\n",   // a field too many
		"22 1 nodev / / rw - ext4 /dev/vda rw\n",     // bad device number
		"22 1 253:1 / / rw shared:1 ext4 /dev/vda\n", // no separator
		"-1 1 253:1 / / rw - ext4 /dev/vda rw\n",     // negative ID
	} {
		if _, err := Parse(strings.NewReader("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n" + bad)); err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%q: err = %v, want it to name line 2", bad, err)
		}
	}
}

func TestResolveSourceDevs(t *testing.T) {
	ms, err := Parse(strings.NewReader(`42 22 0:45 / /mnt/btr rw,relatime shared:21 - btrfs /dev/sdc rw,space_cache=v2
43 22 0:46 / /tmp rw shared:22 - tmpfs tmpfs rw,size=4096k
44 22 0:47 / /mnt/gone rw - btrfs /dev/sdz rw
45 22 8:17 / /mnt/x rw - ext4 /dev/sdb1 rw
`))
	if err != nil {
		t.Fatal(err)
	}
	blockDev := func(p string) (Dev, error) {
		if p == "/dev/sdc" {
			return Dev{Major: 8, Minor: 32}, nil
		}
		if p == "/dev/sdb1" {
			t.Errorf("a mount with a real device number was resolved")
		}
		return Dev{}, errNotBlock
	}
	got := ResolveSourceDevs(ms, blockDev)
	want := []Dev{{Major: 8, Minor: 32}, {Major: 0, Minor: 46}, {Major: 0, Minor: 47}, {Major: 8, Minor: 17}}
	for i := range want {
		if got[i].Dev != want[i] {
			t.Errorf("%s: %v, want %v", got[i].MountPoint, got[i].Dev, want[i])
		}
	}
}

var errNotBlock = errors.New("not a block device")

// A source string only names the device for btrfs. Anyone who can mount
// FUSE chooses its source (fsname), and tmpfs or overlay take any string:
// such a mount of "/dev/mapper/dmsnap-x" must not make that device look
// mounted (restore refused it with exit 4; the watcher opened a session).
func TestResolveSourceDevsOnlyDeviceFilesystems(t *testing.T) {
	ms, err := Parse(strings.NewReader(`50 22 0:50 / /mnt/t rw - tmpfs /dev/mapper/dmsnap-x rw
51 22 0:51 / /mnt/f rw,nosuid,nodev - fuse.sshfs /dev/mapper/dmsnap-x rw,user_id=1000
52 22 0:52 / /mnt/o rw - overlay /dev/mapper/dmsnap-x rw,lowerdir=/a,upperdir=/b,workdir=/c
53 22 0:53 / /mnt/u rw - fuse /dev/mapper/dmsnap-x rw
54 22 0:54 / /mnt/b rw - btrfs /dev/mapper/dmsnap-x rw
`))
	if err != nil {
		t.Fatal(err)
	}
	x := Dev{Major: 253, Minor: 4}
	got := ResolveSourceDevs(ms, func(p string) (Dev, error) {
		if p == "/dev/mapper/dmsnap-x" {
			return x, nil // the path is a real block device
		}
		return Dev{}, errNotBlock
	})
	for _, m := range got {
		want := Dev{Major: 0, Minor: uint32(m.ID)}
		if m.FSType == "btrfs" {
			want = x
		}
		if m.Dev != want {
			t.Errorf("%s mount with source %s: device %v, want %v", m.FSType, m.Source, m.Dev, want)
		}
	}
}

func TestDevText(t *testing.T) {
	d := Dev{Major: 253, Minor: 7}
	if d.IsZero() || !(Dev{}).IsZero() {
		t.Errorf("IsZero: %v %v", d.IsZero(), (Dev{}).IsZero())
	}
	b, err := d.MarshalText()
	if err != nil || string(b) != "253:7" {
		t.Fatalf("MarshalText = %q, %v", b, err)
	}
	var back Dev
	if err := back.UnmarshalText(b); err != nil || back != d {
		t.Fatalf("UnmarshalText(%q) = %v, %v", b, back, err)
	}
	for _, bad := range []string{"", "253", "253:", "x:1", "1:-1", "4294967296:0"} {
		if err := back.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("UnmarshalText(%q) accepted", bad)
		}
	}
	if back != d {
		t.Errorf("a failed UnmarshalText changed the value to %v", back)
	}
}
