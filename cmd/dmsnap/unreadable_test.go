//go:build !vm

package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/fdexhaust"
	"github.com/dmsnap/dmsnap/snapstore"
)

// TestVerifyUnreadableIsNotDamage: sessions whose files the OS will not
// read (every file descriptor in use: EMFILE, which stops root as much as
// anyone) are "cannot verify", with exit 5, not damaged (exit 1); show
// calls such a session unreadable with the reason. A session that fails
// (here: not finished) among them makes it exit 1.
func TestVerifyUnreadableIsNotDamage(t *testing.T) {
	w := newWorld(t)
	t0 := time.Unix(1700000000, 0)
	a := filepath.Base(closedSession(t, w.store, "sdb1", t0))
	b := filepath.Base(closedSession(t, w.store, "sdb1", t0.Add(time.Hour)))
	armed, err := snapstore.CreateSession(w.store, snapstore.State{Name: "sdb1", Device: snapstore.Device{Path: "/dev/sdb1", Size: 16 << 20}, ChunkSize: 4096, Times: snapstore.Times{Armed: t0.Add(3 * time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}

	var code, codeMixed, codeShow int
	var out, errOut, outMixed, outShow string
	fdexhaust.Run(t, func() {
		code, out, errOut = w.run(t, "", "sessions", "verify", a, b)
		codeMixed, outMixed, _ = w.run(t, "", "sessions", "verify", a, filepath.Base(armed))
		codeShow, outShow, _ = w.run(t, "", "sessions", "show", a, "--json")
	})
	if code != 5 || strings.Contains(out, "DAMAGED") || !strings.Contains(errOut, "2 of 2 sessions could not be read") || !strings.Contains(errOut, "not damage") {
		t.Errorf("verify with no file descriptor free: exit %d, want 5\n%s%s", code, out, errOut)
	}
	for _, id := range []string{a, b} {
		if want := id + ": cannot verify: open " + filepath.Join(w.store, id, snapstore.MetaFile) + ": too many open files (an OS error, not damage)"; !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
	if codeMixed != exitFailure || !strings.Contains(outMixed, a+": cannot verify") || !strings.Contains(outMixed, "not finished") {
		t.Errorf("verify of an unreadable and an unfinished session: exit %d, want %d\n%s", codeMixed, exitFailure, outMixed)
	}
	var s map[string]any
	if codeShow != exitOK || decodeResult(outShow, &s) != nil || s["state"] != "unreadable" || !strings.Contains(fmt.Sprint(s["error"]), "too many open files") {
		t.Errorf("show with no file descriptor free: exit %d\n%s", codeShow, outShow)
	}

	// With descriptors to spare, the same sessions verify.
	if code, out, errOut := w.run(t, "", "sessions", "verify", a, b); code != exitOK || strings.Count(out, ": ok") != 2 {
		t.Errorf("verify: exit %d\n%s%s", code, out, errOut)
	}
}
