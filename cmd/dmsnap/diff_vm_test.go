//go:build vm

package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/vmtest"
)

type diffOut struct {
	From    string `json:"from"`
	To      string `json:"to"`
	ToArmed bool   `json:"to_armed"`
	Entries []struct {
		Path   string   `json:"path"`
		Change string   `json:"change"`
		Type   string   `json:"type"`
		Before int64    `json:"size_before"`
		After  int64    `json:"size_after"`
		What   []string `json:"what"`
	} `json:"entries"`
}

func (d diffOut) lines() []string {
	var out []string
	for _, e := range d.Entries {
		if e.Type == "dir" && e.Change == "modified" {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s %d %d %s", e.Change, e.Path, e.Before, e.After, strings.Join(e.What, ",")))
	}
	return out
}

// TestSessionsDiff: sessions diff lists exactly what a scripted workload
// changed in one session, on ext4, ext2 and xfs, against the next session's
// view and against the armed session's (the newest session); on btrfs the
// kernel refuses two mounts of one filesystem, and diff says so.
func TestSessionsDiff(t *testing.T) {
	c := newCLI(t)
	for _, fsName := range []string{"ext4", "ext2", "xfs", "btrfs"} {
		t.Run(fsName, func(t *testing.T) {
			dev := fsDevice(t, matrixFilesystems[fsName])
			name := "df" + fsName
			c.activate(t, dev, name)
			origin := "/dev/mapper/dmsnap-" + name
			mnt := t.TempDir()
			w := c.watch(t)
			session := func(i int, script string) {
				vmtest.Run(t, "mount", origin, mnt)
				vmtest.Sh(t, "cd "+mnt+" && "+script+" && sync")
				vmtest.Run(t, "umount", mnt)
				eventually(t, fmt.Sprintf("session %d to close", i), 90*time.Second, func() bool { return countStates(c.list(t, name))["closed"] == i })
			}
			session(1, "mkdir -p docs keep && echo one > docs/a && echo two > docs/b && echo same > keep/x && dd if=/dev/urandom of=docs/big bs=4k count=10 2>/dev/null && ln -s a docs/link")
			// Session 2, the one looked at: a file added, one deleted, one
			// rewritten at the same size, one grown, a mode changed, a
			// link retargeted.
			session(2, "echo three > docs/c && rm docs/b && echo ONE > docs/a && dd if=/dev/urandom of=docs/big bs=4k count=12 2>/dev/null && chmod 600 keep/x && ln -sf c docs/link")
			session(3, "echo four > docs/d")
			w.stop(t)
			ss := c.list(t, name)
			s2, s3 := ss[1].ID, ss[2].ID
			want := []string{
				"modified /docs/a 4 4 content",
				"deleted /docs/b 4 0 ",
				"modified /docs/big 40960 49152 content",
				"added /docs/c 0 6 ",
				"modified /docs/link 1 1 target",
				"modified /keep/x 5 5 mode",
			}
			if fsName == "btrfs" {
				code, out, errOut := c.try(t, "", "sessions", "diff", s2)
				if code == 0 || !strings.Contains(errOut, "same fsid") {
					t.Fatalf("diff on btrfs: exit %d\n%s%s", code, out, errOut)
				}
				if left := dmsnapDevices(t); slices.ContainsFunc(left, func(d string) bool { return strings.Contains(d, "-at") }) {
					t.Fatalf("a refused diff left views: %v", left)
				}
				return
			}
			var d diffOut
			if err := decodeResult(c.ok(t, "sessions", "diff", s2, "--json"), &d); err != nil {
				t.Fatal(err)
			}
			if d.From != s2 || d.To != s3 || d.ToArmed || !slices.Equal(d.lines(), want) {
				t.Fatalf("diff %s: from %s to %s (armed %v):\n%s\nwant\n%s", s2, d.From, d.To, d.ToArmed, strings.Join(d.lines(), "\n"), strings.Join(want, "\n"))
			}
			// The newest session, against the armed session's view.
			d = diffOut{}
			if err := decodeResult(c.ok(t, "sessions", "diff", s3, "--json"), &d); err != nil {
				t.Fatal(err)
			}
			if !d.ToArmed || !slices.Equal(d.lines(), []string{"added /docs/d 0 5 "}) {
				t.Fatalf("diff %s (the newest): to %s armed %v:\n%s", s3, d.To, d.ToArmed, strings.Join(d.lines(), "\n"))
			}
			// Sessions 2 and 3 together, in text.
			out := c.ok(t, "sessions", "diff", s2, filepath.Base(c.registryArmed(t, name)))
			if !strings.Contains(out, "A /docs/d (5 B)") || !strings.Contains(out, "D /docs/b (4 B)") || !strings.Contains(out, "7 change(s)") {
				t.Fatalf("diff %s to the armed session:\n%s", s2, out)
			}
			if v := c.ok(t, "status", name); strings.Contains(v, "view:") {
				t.Fatalf("diff left views open:\n%s", v)
			}
		})
	}
}

// registryArmed is the directory of device name's armed session.
func (c *cli) registryArmed(t *testing.T, name string) string {
	t.Helper()
	for _, d := range c.status(t).Devices {
		if d.Name == name && len(d.Sessions) == 1 {
			return d.Sessions[0].Dir
		}
	}
	t.Fatalf("no armed session of %s", name)
	return ""
}
