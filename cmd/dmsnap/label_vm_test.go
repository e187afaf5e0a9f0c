//go:build vm

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/snapstore"
)

// TestCLILabelsAndPins: on the real kernel and store, a label given at
// activation and one given with label-next --pin before a mount end up in
// the closed sessions' meta.json (which still verifies), are listed, and
// the pinned session survives prune --keep 0 with every session after it.
func TestCLILabelsAndPins(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 32<<20)
	const name = "lb"
	origin := "/dev/mapper/dmsnap-" + name
	c.ok(t, "activate", raw, "--name", name, "--prealloc", c.prealloc, "--label", "fresh")
	t.Cleanup(func() { c.try(t, "", "deactivate", name) })
	w := c.watch(t)
	mnt := t.TempDir()
	closed := func(n int) []listed {
		var ss []listed
		eventually(t, "the sessions to close", 60*time.Second, func() bool {
			ss = c.list(t, name)
			return countStates(ss)["closed"] == n
		})
		return ss
	}
	mountWriteUnmount(t, origin, mnt, 1)
	closed(1)
	c.ok(t, "label-next", "before the upgrade", name, "--pin")
	if st := c.ok(t, "status", name); !strings.Contains(st, `label: "before the upgrade" (pinned)`) {
		t.Fatalf("status does not show the armed session's label:\n%s", st)
	}
	mountWriteUnmount(t, origin, mnt, 2)
	closed(2)
	mountWriteUnmount(t, origin, mnt, 3)
	ss := closed(3)
	w.stop(t)

	var got []sessionJSON
	if err := decodeResult(c.ok(t, "sessions", "list", name, "--json"), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0].Label != "fresh" || got[0].Pinned || got[1].Label != "before the upgrade" || !got[1].Pinned || got[2].Label != "" {
		t.Fatalf("sessions: %+v", got)
	}
	m, err := os.ReadFile(filepath.Join(ss[1].Dir, snapstore.MetaFile))
	if err != nil || !strings.Contains(string(m), `"label": "before the upgrade"`) || !strings.Contains(string(m), `"pinned": true`) {
		t.Fatalf("meta.json of the pinned session: %v\n%s", err, m)
	}
	c.ok(t, "sessions", "verify")
	code, out, errOut := c.try(t, "", "sessions", "prune", name, "--keep", "0")
	if code != 0 || !strings.Contains(errOut, "pinned") {
		t.Fatalf("prune --keep 0: exit %d\n%s%s", code, out, errOut)
	}
	left := c.list(t, name)
	if len(left) != 3 || left[0].ID != ss[1].ID {
		t.Fatalf("after prune: %+v, want the pinned %s and every session after it", left, ss[1].ID)
	}
	// Pinned, it is still a restore point.
	c.ok(t, "restore", name, "--session", ss[1].ID, "--yes")
}
