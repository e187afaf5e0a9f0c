package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/snapstore"
)

const (
	fxChunk = 4096
	fxSize  = 16 * fxChunk
)

// restoreFixture is a device image (a regular file: restore takes one like a
// device that is not activated) and a store with sessions of it. states[i]
// is the device before session i; the last one is its present content.
type restoreFixture struct {
	dir, store, state, dev string
	ids                    []string
	states                 [][]byte
}

func fill(b byte) []byte { return bytes.Repeat([]byte{b}, fxChunk) }

// newRestoreFixture runs sessions over the image: each writes the chunks
// listed, in the order listed, and records their pre-images as dmsnap does
// (sorted, one CRC-32C each, checksummed meta.json).
func newRestoreFixture(t *testing.T, sessions ...[]int) *restoreFixture {
	t.Helper()
	times := make([]int64, len(sessions))
	for n := range times {
		times[n] = 1700000000 + 10*int64(n)
	}
	return newRestoreFixtureAt(t, times, sessions...)
}

// newRestoreFixtureAt is newRestoreFixture with the sessions' times (in
// their directory names and meta.json) given: a clock that stepped back
// between two sessions gives a later session an earlier time.
func newRestoreFixtureAt(t *testing.T, times []int64, sessions ...[]int) *restoreFixture {
	t.Helper()
	dir := t.TempDir()
	fx := &restoreFixture{dir: dir, store: filepath.Join(dir, "store"), state: filepath.Join(dir, "state"), dev: filepath.Join(dir, "dev.img")}
	cur := make([]byte, fxSize)
	for i := range cur {
		cur[i] = byte(i / fxChunk)
	}
	for n, chunks := range sessions {
		fx.states = append(fx.states, bytes.Clone(cur))
		id := fmt.Sprintf("dev.img_%d", times[n])
		fx.ids = append(fx.ids, id)
		saved := map[int]bool{}
		var sorted []int
		for c := 0; c < fxSize/fxChunk; c++ {
			for _, w := range chunks {
				if w == c && !saved[c] {
					saved[c] = true
					sorted = append(sorted, c)
				}
			}
		}
		var dat, crc []byte
		var recs []snapstore.Record
		for _, c := range sorted {
			pre := cur[c*fxChunk : (c+1)*fxChunk]
			recs = append(recs, snapstore.Record{Sector: uint64(c * fxChunk / 512), Size: fxChunk, Offset: uint64(len(dat))})
			dat = append(dat, pre...)
			crc = binary.LittleEndian.AppendUint32(crc, snapstore.ChecksumData(pre))
		}
		for _, c := range chunks {
			copy(cur[c*fxChunk:], fill(byte(0x10*(n+1)+c)))
		}
		sd := filepath.Join(fx.store, id)
		mp := snapstore.EncodeMap(recs)
		hm, hc := sha256.Sum256(mp), sha256.Sum256(crc)
		meta := snapstore.Meta{Device: fx.dev, Timestamp: times[n] * 1e9, BlockSize: fxChunk, FsType: "",
			TotalBlocksSaved: int64(len(recs)), SnapshotType: snapstore.SnapshotTypeCOW,
			Dmsnap: &snapstore.DmsnapMeta{FormatVersion: snapstore.MetaFormatVersion, Name: "dev.img", Sequence: n + 1,
				Device: snapstore.Device{Path: fx.dev, Size: fxSize}, ChunkSize: fxChunk, Layout: snapstore.LayoutPacked,
				State: snapstore.StateComplete, Checksums: snapstore.Checksums{RecordCRC: snapstore.CRCAlgorithm,
					BlocksMap: hex.EncodeToString(hm[:]), BlocksCRC: hex.EncodeToString(hc[:])}}}
		mb, err := snapstore.EncodeMeta(meta)
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(sd, 0o755)
		for name, b := range map[string][]byte{snapstore.DataFile: dat, snapstore.MapFile: mp, snapstore.CRCFile: crc, snapstore.MetaFile: mb} {
			if err := os.WriteFile(filepath.Join(sd, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	fx.states = append(fx.states, bytes.Clone(cur))
	if err := os.WriteFile(fx.dev, cur, 0o644); err != nil {
		t.Fatal(err)
	}
	return fx
}

func (fx *restoreFixture) run(t *testing.T, stdin *os.File, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	all := append([]string{"--store", fx.store, "--state", fx.state, "restore"}, args...)
	var code int
	if stdin != nil {
		code = run(context.Background(), all, stdin, &out, &errOut)
	} else {
		code = run(context.Background(), all, strings.NewReader(""), &out, &errOut)
	}
	return code, out.String(), errOut.String()
}

func (fx *restoreFixture) device(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(fx.dev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRestoreUsage(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2})
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"a", "b"}, "at most one device"},
		{[]string{"--session", "../etc", "--yes"}, "--session"},
		{[]string{"--to", "x.img", "--no-undo", "--session", "latest"}, "--no-undo and --to"},
		{[]string{"--bogus"}, "unknown flag"},
		{[]string{"dev.img", "--yes"}, "--session ID is required"},
		{[]string{"dev.img", "--session", "latest"}, "pass --yes"},
	}
	before := fx.device(t)
	for _, c := range cases {
		code, _, errOut := fx.run(t, nil, c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("restore %q: exit %d, %q; want exit %d mentioning %q", c.args, code, errOut, exitUsage, c.want)
		}
	}
	if !bytes.Equal(fx.device(t), before) {
		t.Fatal("a usage error changed the device")
	}
	if code, _, errOut := fx.run(t, nil, "dev.img", "--session", "dev.img_1", "--yes"); code != exitFailure || !strings.Contains(errOut, "no closed session dev.img_1") {
		t.Errorf("unknown session: exit %d, %q", code, errOut)
	}
}

// The clock stepped back between the sessions (a dead RTC before NTP, a VM
// restored): their directory names are out of order, their sequence
// numbers are not, and every restore follows the sequence.
func TestRestoreChainFollowsSequenceNotClock(t *testing.T) {
	times := []int64{1700000500, 1700000100, 1700000300}
	for target := 0; target < 3; target++ {
		fx := newRestoreFixtureAt(t, times, []int{3, 1, 3}, []int{1, 2, 7}, []int{0, 15, 7, 2})
		if code, _, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[target], "--yes"); code != exitOK {
			t.Fatalf("restore to %s: exit %d: %s", fx.ids[target], code, errOut)
		}
		if got := fx.device(t); !bytes.Equal(got, fx.states[target]) {
			t.Fatalf("restore to %s (session %d of 3): device differs from its state before the session", fx.ids[target], target+1)
		}
	}
	// "latest" is the last taken, not the latest by the clock.
	fx := newRestoreFixtureAt(t, times, []int{3, 1, 3}, []int{1, 2, 7}, []int{0, 15, 7, 2})
	if code, _, errOut := fx.run(t, nil, "dev.img", "--session", "latest", "--yes"); code != exitOK {
		t.Fatalf("restore to latest: exit %d: %s", code, errOut)
	}
	if got := fx.device(t); !bytes.Equal(got, fx.states[2]) {
		t.Fatal("restore to latest is not the state before the last session taken")
	}
}

func TestRestoreChainToEachSession(t *testing.T) {
	for target := 0; target < 3; target++ {
		fx := newRestoreFixture(t, []int{3, 1, 3}, []int{1, 2, 7}, []int{0, 15, 7, 2})
		// Given by path (its name from the path), by name (the path from
		// meta.json), or by the session only.
		args := [][]string{{fx.dev}, {"dev.img"}, {}}[target]
		args = append(args, "--session", fx.ids[target], "--yes", "--json")
		code, out, errOut := fx.run(t, nil, args...)
		if code != exitOK {
			t.Fatalf("restore to %s: exit %d: %s", fx.ids[target], code, errOut)
		}
		if got := fx.device(t); !bytes.Equal(got, fx.states[target]) {
			t.Fatalf("restore to %s: device differs from its state before the session", fx.ids[target])
		}
		var res map[string]any
		if err := decodeResult(out, &res); err != nil {
			t.Fatalf("JSON output %q: %v", out, err)
		}
		if errOut != "" { // no progress lines: 2>&1 still reads as one envelope
			t.Fatalf("restore --json wrote to stderr: %q", errOut)
		}
		sessions, _ := res["sessions"].([]any)
		sum, _ := res["summary"].(map[string]any)
		if res["device"] != fx.dev || res["name"] != "dev.img" || res["session"] != fx.ids[target] ||
			len(sessions) != 3-target || res["undoable"] != false || res["through"] == "" ||
			sum == nil || sum["bytes"] != res["bytes_written"] || res["bytes_written"].(float64) == 0 {
			t.Fatalf("JSON result %s", out)
		}
	}
}

func TestRestoreDryRunAndToFile(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 5})
	before := fx.device(t)

	code, out, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[0], "--dry-run", "--json")
	if code != exitOK {
		t.Fatalf("dry run: exit %d: %s", code, errOut)
	}
	var dry rollback.Result
	if err := decodeResult(out, &dry); err != nil {
		t.Fatal(err)
	}
	if !dry.DryRun || dry.Summary.Bytes != 3*fxChunk || len(dry.Summary.Sessions) != 2 || dry.Written != 0 {
		t.Fatalf("dry run result %+v", dry)
	}
	code, out, _ = fx.run(t, nil, "dev.img", "--session", fx.ids[0], "--dry-run")
	if code != exitOK || !strings.Contains(out, "Nothing was written") || !strings.Contains(out, fx.ids[1]) {
		t.Fatalf("dry run text: exit %d: %s", code, out)
	}

	img := filepath.Join(fx.dir, "out.img")
	code, _, errOut = fx.run(t, nil, "dev.img", "--session", fx.ids[0], "--to", img)
	if code != exitOK {
		t.Fatalf("--to: exit %d: %s", code, errOut)
	}
	if got, _ := os.ReadFile(img); !bytes.Equal(got, fx.states[0]) {
		t.Fatal("--to image differs from the device before session 1")
	}
	if !bytes.Equal(fx.device(t), before) {
		t.Fatal("dry run or --to changed the device")
	}
}

func TestRestoreRefusesDamageAndOtherSize(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 5})
	before := fx.device(t)
	dat := filepath.Join(fx.store, fx.ids[1], snapstore.DataFile)
	b, _ := os.ReadFile(dat)
	b[fxChunk+9] ^= 0x80 // second record: sector 40, chunk 5
	os.WriteFile(dat, b, 0o644)
	code, _, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[0], "--yes")
	if code != exitFailure || !strings.Contains(errOut, fx.ids[1]) || !strings.Contains(errOut, "sector 40") {
		t.Fatalf("flipped bit: exit %d: %s", code, errOut)
	}
	if !bytes.Equal(fx.device(t), before) {
		t.Fatal("the refused restore changed the device")
	}
	b[fxChunk+9] ^= 0x80
	os.WriteFile(dat, b, 0o644)

	os.Truncate(fx.dev, fxSize+fxChunk)
	before = fx.device(t)
	code, _, errOut = fx.run(t, nil, "dev.img", "--session", fx.ids[0], "--yes")
	if code != exitFailure || !strings.Contains(errOut, "size") {
		t.Fatalf("other size: exit %d: %s", code, errOut)
	}
	if !bytes.Equal(fx.device(t), before) {
		t.Fatal("the refused restore changed the device of another size")
	}
}

func TestPickSession(t *testing.T) {
	list := []snapstore.SessionInfo{
		{ID: "sdb1_1700000000", Time: time.Unix(1700000000, 0), Status: snapstore.StatusComplete, Meta: &snapstore.Meta{TotalBlocksSaved: 3, BlockSize: 4096}},
		{ID: "sdb1_1700000100", Time: time.Unix(1700000100, 0), Status: snapstore.StatusUnverified, Meta: &snapstore.Meta{TotalBlocksSaved: 256, BlockSize: 4096}},
	}
	cases := []struct {
		in   string
		want int
		err  bool
	}{
		{"2\n", 1, false},
		{"0\nfoo\n1\n", 0, false},
		{"sdb1_1700000100\n", 1, false},
		{"q\n", 0, true},
		{"", 0, true},
		{"7", 0, true},
	}
	for _, c := range cases {
		var out bytes.Buffer
		got, err := pickSession(bufio.NewReader(strings.NewReader(c.in)), &out, "sdb1", list)
		if (err != nil) != c.err || (!c.err && got != c.want) {
			t.Errorf("answers %q: %d, %v", c.in, got, err)
		}
		if !strings.Contains(out.String(), "sdb1_1700000100") || !strings.Contains(out.String(), "1.0 MiB") ||
			!strings.Contains(out.String(), "2023-11-14 22:13:20") {
			t.Errorf("listing:\n%s", out.String())
		}
	}
	for in, want := range map[string]bool{"y\n": true, "YES\n": true, "\n": false, "n\n": false, "": false, "yess\n": false} {
		if got := confirm(bufio.NewReader(strings.NewReader(in)), &bytes.Buffer{}, "go?"); got != want {
			t.Errorf("confirm %q: %v", in, got)
		}
	}
}

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// TestRestorePickerOnTerminal runs restore without --session on a real
// pseudo-terminal: it lists the sessions, takes the choice, asks for
// confirmation and restores.
func TestRestorePickerOnTerminal(t *testing.T) {
	fx := newRestoreFixture(t, []int{4}, []int{4, 6}, []int{9})
	master, slave := openPTY(t)
	if !isTerminal(slave) || isTerminal(strings.NewReader("")) {
		t.Fatal("isTerminal does not tell a pty from a reader")
	}
	// The answers wait in the terminal's input queue: session 2, then yes.
	if _, err := master.WriteString("2\ny\n"); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := fx.run(t, slave, "dev.img")
	if code != exitOK {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	for _, want := range []string{fx.ids[0], fx.ids[2], "Restore to the state before which session?", "[y/N]", "cannot be undone", "not activated"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !bytes.Equal(fx.device(t), fx.states[1]) {
		t.Fatal("device is not as before session 2")
	}

	// Answering no writes nothing.
	before := fx.device(t)
	master.WriteString("1\nn\n")
	if code, out, _ := fx.run(t, slave, "dev.img"); code != exitFailure || !strings.Contains(out, "[y/N]") {
		t.Fatalf("declined: exit %d: %s", code, out)
	}
	if !bytes.Equal(fx.device(t), before) {
		t.Fatal("a declined restore changed the device")
	}
}

// Regression: restore --no-undo overwrote the device with no session to
// undo it and no password asked. It asks now, before anything is written;
// a restore that can be undone (or, for a device not activated, that the
// user confirms as usual) does not.
func TestRestoreNoUndoAsksForThePassword(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 5})
	testSecret(t)
	setPassword(t, "hunter2")
	before := fx.device(t)

	code, out, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[0], "--yes", "--no-undo", "--password-stdin")
	if code != exitFailure || !strings.Contains(errOut, "control password") {
		t.Fatalf("--no-undo with no password given: exit %d\n%s%s", code, out, errOut)
	}
	var outB, errB bytes.Buffer
	all := []string{"--store", fx.store, "--state", fx.state, "restore", "dev.img", "--session", fx.ids[0], "--yes", "--no-undo", "--password-stdin"}
	if code := run(context.Background(), all, strings.NewReader("guess\n"), &outB, &errB); code != exitBadPassword || !strings.Contains(errB.String(), "wrong password") {
		t.Fatalf("--no-undo with a wrong password: exit %d\n%s%s", code, outB.String(), errB.String())
	}
	if !bytes.Equal(fx.device(t), before) {
		t.Fatal("a restore refused for its password changed the device")
	}
	if code, out, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[0], "--no-undo", "--dry-run"); code != exitOK || !bytes.Equal(fx.device(t), before) {
		t.Fatalf("--no-undo --dry-run needs no password and writes nothing: exit %d\n%s%s", code, out, errOut)
	}
	pf := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pf, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[1], "--yes", "--no-undo", "--password-file", pf); code != exitOK || !bytes.Equal(fx.device(t), fx.states[1]) {
		t.Fatalf("--no-undo with the password: exit %d, restored %v\n%s%s", code, bytes.Equal(fx.device(t), fx.states[1]), out, errOut)
	}
	if code, out, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[0], "--yes"); code != exitOK || !bytes.Equal(fx.device(t), fx.states[0]) {
		t.Fatalf("a restore without --no-undo asks no password: exit %d\n%s%s", code, out, errOut)
	}
}

// After a direct restore (the device not activated) to the state before the
// second of three sessions, the third no longer describes the device: a
// restore to it ("latest") would write its pre-images onto a state they
// were not taken from. It is refused, naming what works; the first and the
// second still restore right.
func TestRestoreAfterDirectRestore(t *testing.T) {
	fx := newRestoreFixture(t, []int{3, 1, 3}, []int{1, 2, 7}, []int{0, 15, 7, 2})
	if code, _, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[1], "--yes"); code != exitOK {
		t.Fatalf("restore to %s: exit %d: %s", fx.ids[1], code, errOut)
	}
	if b, err := os.ReadFile(filepath.Join(fx.store, snapstore.RestoresLog)); err != nil || !strings.Contains(string(b), fx.ids[1]) {
		t.Fatalf("%s: %q %v, want the restore noted", snapstore.RestoresLog, b, err)
	}
	at := fx.device(t)
	for _, args := range [][]string{{"--session", "latest", "--yes"}, {"--session", fx.ids[2], "--dry-run"}, {"--session", fx.ids[2], "--to", filepath.Join(t.TempDir(), "img")}} {
		code, out, errOut := fx.run(t, nil, append([]string{"dev.img"}, args...)...)
		if code != exitFailure || !strings.Contains(errOut, "never had") || !strings.Contains(errOut, "restore to "+fx.ids[1]+" or an earlier session") {
			t.Errorf("restore %v after the device was put back before %s: exit %d\n%s%s", args, fx.ids[1], code, out, errOut)
		}
		if !bytes.Equal(fx.device(t), at) {
			t.Fatalf("restore %v changed the device", args)
		}
	}
	for _, target := range []int{1, 0} {
		if code, _, errOut := fx.run(t, nil, "dev.img", "--session", fx.ids[target], "--yes"); code != exitOK {
			t.Fatalf("restore to %s: exit %d: %s", fx.ids[target], code, errOut)
		}
		if !bytes.Equal(fx.device(t), fx.states[target]) {
			t.Fatalf("restore to %s: not the state before it", fx.ids[target])
		}
	}
}

// restore --file takes --session ID and --to DIR, and nothing of a device
// restore; usage errors change nothing.
func TestRestoreFilesUsage(t *testing.T) {
	w := newWorld(t)
	for _, args := range [][]string{
		{"restore", "--file", "/etc/passwd", "--session", "sdb1_1700000000"},
		{"restore", "--file", "/etc/passwd", "--to", "/tmp/x"},
		{"restore", "--file", "/etc/passwd", "--to", "/tmp/x", "--session", "latest"},
		{"restore", "--file", "/etc/passwd", "--to", "/tmp/x", "--session", "sdb1_1700000000", "--merge"},
		{"restore", "--file", "/etc/passwd", "--to", "/tmp/x", "--session", "sdb1_1700000000", "--no-undo"},
		{"restore", "--file", "/etc/passwd", "--to", "/tmp/x", "--session", "sdb1_1700000000", "--dry-run"},
		{"restore", "sdc1", "--file", "/etc/passwd", "--to", "/tmp/x", "--session", "sdb1_1700000000"},
	} {
		if code, _, errOut := w.run(t, "", args...); code != exitUsage {
			t.Errorf("dmsnap %q: exit %d, want %d: %s", args, code, exitUsage, errOut)
		}
	}
	if len(w.sys.Calls) != 0 {
		t.Errorf("usage errors changed the system: %v", w.sys.Calls)
	}
}
