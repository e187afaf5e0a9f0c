package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/internal/passwd"
	"github.com/dmsnap/dmsnap/internal/sdnotify/sdnotifytest"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/sessiontest"
	"github.com/dmsnap/dmsnap/snapstore"
	"github.com/dmsnap/dmsnap/snapstore/snapstoretest"
)

// world is a fake system (session/sessiontest) the session commands run
// against, with a state directory and a store in temporary directories.
type world struct {
	sys    *sessiontest.System
	state  string
	store  string
	passwd string // the control password file, in place of passwd.Path
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{sys: sessiontest.NewSystem(), state: t.TempDir(), store: t.TempDir(), passwd: testSecret(t)}
	prevM := newManager
	newManager = func(e *env) *session.Manager {
		m := w.sys.Manager(e.state, e.store)
		setLockWait(e, m)
		if !e.noWait && e.wait == cliLockWait {
			m.LockWait = 2 * time.Second // a test's default: a held lock fails soon
		}
		return m
	}
	t.Cleanup(func() { newManager = prevM })
	return w
}

// testSecret points the CLI's control password at a file of the test's
// instead of the host's, with cheap Argon2 and a short refusal delay, and
// returns its path.
func testSecret(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "etc", passwd.File)
	prev := newSecret
	newSecret = func() *passwd.Secret {
		return &passwd.Secret{Path: path, RefusalDelay: 50 * time.Millisecond,
			Params: passwd.Argon2Params{Time: 1, MemoryKiB: 1024, Threads: 1, SaltLen: 16, KeyLen: 32}}
	}
	t.Cleanup(func() { newSecret = prev })
	return path
}

// setPassword sets the (test's) control password.
func setPassword(t *testing.T, pw string) {
	t.Helper()
	if err := newSecret().Set([]byte(pw)); err != nil {
		t.Fatal(err)
	}
}

// run runs dmsnap with the world's --state and --store and stdin.
func (w *world) run(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	all := append([]string{"--state", w.state, "--store", w.store}, args...)
	code := run(context.Background(), all, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

var sdb1 = session.Identity{Dev: session.DevNum{Major: 8, Minor: 17}, Size: 64 << 20, FSType: "ext4", FSUUID: "0b2c5b8e-9e55-4a4f-8f0e-2f6a3c1d9e01",
	Stable: &devid.ID{Kind: devid.KindDisk, Serial: "TEST-SDB"}}

func (w *world) registry(t *testing.T) *session.Registry {
	t.Helper()
	reg, err := session.LoadRegistry(w.state)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func TestActivateUsage(t *testing.T) {
	w := newWorld(t)
	for _, args := range [][]string{
		{"activate"},
		{"activate", "/dev/sdb1", "/dev/sdc1"},
		{"activate", "/dev/sdb1", "--chunk-size", "3KiB"},
		{"activate", "/dev/sdb1", "--chunk-size", "1MiB"},
		{"activate", "/dev/sdb1", "--chunk-size", "lots"},
		{"activate", "/dev/sdb1", "--name", "a/b"},
		{"activate", "/dev/sdb1", "--password-stdin", "--password-file", "/x"},
		{"activate", "/dev/sdb1", "--password", "secret"}, // never from argv
		{"deactivate"},
		{"status", "a", "b"},
		{"sessions"},
		{"sessions", "frob"},
		{"sessions", "prune", "sdb1"},
		{"sessions", "prune", "sdb1", "--keep", "2", "--older-than", "1h"},
		{"sessions", "prune", "sdb1", "--older-than", "soon"},
		{"watch", "--interval", "0s"},
		{"watch", "--grow-every", "-1s"},
	} {
		if code, _, _ := w.run(t, "", args...); code != exitUsage {
			t.Errorf("dmsnap %q: exit %d, want %d", args, code, exitUsage)
		}
	}
	if len(w.sys.Calls) != 0 {
		t.Errorf("usage errors changed the system: %v", w.sys.Calls)
	}
}

func TestActivateStatusDeactivate(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	code, out, errOut := w.run(t, "", "activate", "/dev/sdb1", "--chunk-size", "64KiB")
	if code != exitOK {
		t.Fatalf("activate: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "/dev/mapper/dmsnap-sdb1") {
		t.Errorf("activate output does not say what to mount: %q", out)
	}
	d := w.registry(t).Device("sdb1")
	if d == nil || d.State != session.DeviceActive || d.ChunkSize != 64<<10 || d.Current() == nil || d.Current().State != session.SessionArmed {
		t.Fatalf("registry after activate: %+v", d)
	}

	code, out, errOut = w.run(t, "", "status", "--json")
	if code != exitOK {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var st struct {
		Devices []struct {
			Name  string `json:"name"`
			Path  string `json:"path"`
			State string `json:"state"`
			Stack *struct {
				Origin   string `json:"origin"`
				Complete bool   `json:"complete"`
			} `json:"stack"`
			MountedOn []string `json:"mounted_on"`
			Sessions  []struct {
				N        int    `json:"n"`
				State    string `json:"state"`
				Snapshot *struct {
					State string `json:"state"`
				} `json:"snapshot"`
			} `json:"sessions"`
			StoreSpace *struct {
				Free  uint64 `json:"free_bytes"`
				Total uint64 `json:"total_bytes"`
			} `json:"store_space"`
			InvalidSessions []string `json:"invalid_sessions"`
			Issues          []string `json:"issues"`
		} `json:"devices"`
	}
	if err := decodeResult(out, &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(st.Devices) != 1 {
		t.Fatalf("status --json: %d devices\n%s", len(st.Devices), out)
	}
	dv := st.Devices[0]
	if dv.Name != "sdb1" || dv.Path != "/dev/sdb1" || dv.State != "active" || dv.Stack == nil || !dv.Stack.Complete ||
		dv.Stack.Origin != "/dev/mapper/dmsnap-sdb1" || len(dv.Sessions) != 1 || dv.Sessions[0].State != "armed" ||
		dv.Sessions[0].Snapshot == nil || dv.Sessions[0].Snapshot.State != "active" || dv.StoreSpace == nil ||
		dv.StoreSpace.Total == 0 || dv.MountedOn == nil || dv.InvalidSessions == nil || len(dv.Issues) != 0 {
		t.Fatalf("status --json: %+v\n%s", dv, out)
	}
	if code, out, _ := w.run(t, "", "status"); code != exitOK || !strings.Contains(out, "session 1: armed") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	if code, _, errOut := w.run(t, "", "status", "nosuch"); code != exitFailure || !strings.Contains(errOut, "not activated") {
		t.Errorf("status nosuch: exit %d: %s", code, errOut)
	}

	// A second activation of the same device fails cleanly.
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1"); code != exitFailure || !strings.Contains(errOut, "already activated") {
		t.Errorf("second activate: exit %d: %s", code, errOut)
	}

	// Deactivating while the origin is mounted is refused with exit 4.
	origin := w.sys.Kernel.OriginDev("sdb1")
	w.sys.Mount(origin, "/mnt", "ext4")
	if code, _, errOut := w.run(t, "", "deactivate", "sdb1"); code != exitBusy || !strings.Contains(errOut, "unmount") {
		t.Errorf("deactivate while mounted: exit %d: %s", code, errOut)
	}
	w.sys.Unmount(origin)
	if code, _, errOut := w.run(t, "", "deactivate", "sdb1"); code != exitOK {
		t.Fatalf("deactivate: exit %d: %s", code, errOut)
	}
	if n := len(w.registry(t).Devices); n != 0 {
		t.Fatalf("%d devices left after deactivate", n)
	}
	if names := w.sys.Kernel.StackNames(); len(names) != 0 {
		t.Fatalf("stacks left after deactivate: %v", names)
	}
}

func TestActivateMountedDeviceIsBusy(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	w.sys.Mount(sdb1.Dev, "/mnt", "ext4")
	code, _, errOut := w.run(t, "", "activate", "/dev/sdb1")
	if code != exitBusy || !strings.Contains(errOut, "/mnt") || !strings.Contains(errOut, "unmount") {
		t.Fatalf("activate mounted device: exit %d: %s", code, errOut)
	}
	if n := len(w.registry(t).Devices); n != 0 || len(w.sys.Kernel.StackNames()) != 0 {
		t.Fatalf("left behind: %d devices, stacks %v", n, w.sys.Kernel.StackNames())
	}
}

func TestActivateNotABlockDevice(t *testing.T) {
	w := newWorld(t)
	code, _, errOut := w.run(t, "", "activate", "/nonexistent")
	if code != exitFailure || !strings.Contains(errOut, "/nonexistent") || !strings.Contains(errOut, "block device") {
		t.Fatalf("activate of nothing: exit %d: %s", code, errOut)
	}
}

func TestPasswordPaths(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)

	// No secret: passwd sets one from stdin.
	if code, _, errOut := w.run(t, "hunter2\n", "passwd", "--password-stdin"); code != exitOK {
		t.Fatalf("passwd: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(w.passwd); err != nil {
		t.Fatal(err)
	}
	// Without any password source and no terminal: a clear error, not 3.
	code, _, errOut := w.run(t, "", "activate", "/dev/sdb1", "--password-stdin")
	if code != exitFailure || !strings.Contains(errOut, "password") {
		t.Errorf("activate with empty stdin: exit %d: %s", code, errOut)
	}
	// Wrong password: exit 3 and nothing changed.
	w.sys.ResetCalls()
	code, _, errOut = w.run(t, "wrong\n", "activate", "/dev/sdb1", "--password-stdin")
	if code != exitBadPassword {
		t.Fatalf("wrong password: exit %d: %s", code, errOut)
	}
	if len(w.sys.Calls) != 0 || len(w.registry(t).Devices) != 0 {
		t.Fatalf("a wrong password changed things: calls %v", w.sys.Calls)
	}
	// Right password from a file.
	pf := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pf, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1", "--password-file", pf); code != exitOK {
		t.Fatalf("activate with password file: exit %d: %s", code, errOut)
	}
	if code, _, _ := w.run(t, "nope\n", "deactivate", "sdb1", "--password-stdin"); code != exitBadPassword {
		t.Fatalf("deactivate with a wrong password: exit %d", code)
	}
	if w.registry(t).Device("sdb1") == nil {
		t.Fatal("a wrong password deactivated the device")
	}
	// Changing it needs the old one: old line, then new line.
	if code, _, _ := w.run(t, "bad\nnew\n", "passwd", "--password-stdin"); code != exitBadPassword {
		t.Fatalf("passwd with a wrong old password: exit %d", code)
	}
	if code, _, errOut := w.run(t, "hunter2\nnew-one\n", "passwd", "--password-stdin"); code != exitOK {
		t.Fatalf("passwd change: exit %d: %s", code, errOut)
	}
	if code, _, errOut := w.run(t, "new-one\n", "deactivate", "/dev/sdb1", "--password-stdin"); code != exitOK {
		t.Fatalf("deactivate with the new password: exit %d: %s", code, errOut)
	}
	if code, _, errOut := w.run(t, "new-one\n", "passwd", "--password-stdin", "--clear"); code != exitOK {
		t.Fatalf("passwd --clear: exit %d: %s", code, errOut)
	}
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1"); code != exitOK {
		t.Fatalf("activate with no secret set: exit %d: %s", code, errOut)
	}
}

func TestLockedStateIsBusy(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	l, err := session.AcquireLock(context.Background(), w.state, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	code, _, errOut := w.run(t, "", "activate", "/dev/sdb1")
	if code != exitBusy || !strings.Contains(errOut, "lock") {
		t.Fatalf("activate while locked: exit %d: %s", code, errOut)
	}
	// The wait is announced, naming the holder; the refusal names it too.
	holder := fmt.Sprintf("pid %d (%s ", os.Getpid(), filepath.Base(os.Args[0])) // and its arguments
	if !strings.Contains(errOut, "is held by "+holder) || !strings.Contains(errOut, "waiting up to 2s") || !strings.Contains(errOut, "dmsnap "+holder) {
		t.Errorf("activate while locked says %q; want the wait announced and the holder named (%s)", errOut, holder)
	}
	// --no-wait: at once, with no wait announced.
	start := time.Now()
	code, _, errOut = w.run(t, "", "--no-wait", "activate", "/dev/sdb1")
	if code != exitBusy || strings.Contains(errOut, "waiting") || time.Since(start) > time.Second {
		t.Errorf("activate --no-wait while locked: exit %d after %v: %s", code, time.Since(start), errOut)
	}
	// --wait: as long as asked.
	start = time.Now()
	if code, _, errOut = w.run(t, "", "activate", "/dev/sdb1", "--wait", "300ms"); code != exitBusy || time.Since(start) > 1500*time.Millisecond {
		t.Errorf("activate --wait 300ms while locked: exit %d after %v: %s", code, time.Since(start), errOut)
	}
	if code, _, _ = w.run(t, "", "activate", "/dev/sdb1", "--wait", "1s", "--no-wait"); code != exitUsage {
		t.Errorf("--wait with --no-wait: exit %d, want %d", code, exitUsage)
	}
}

// closedSession makes a real finished session in store from the kernel-made
// COW in snapstore's testdata (147 chunks of 4 KiB), mounted at mount.
func closedSession(t *testing.T, store, name string, mount time.Time) string {
	return snapstoretest.Finished(t, store, name, mount, "")
}

func TestSessionsListShowVerify(t *testing.T) {
	w := newWorld(t)
	t0 := time.Unix(1700000000, 0)
	closedSession(t, w.store, "sdb1", t0)
	d2 := closedSession(t, w.store, "sdb1", t0.Add(time.Hour))
	closedSession(t, w.store, "sdc1", t0.Add(2*time.Hour))
	armed, err := snapstore.CreateSession(w.store, snapstore.State{Name: "sdb1", Device: snapstore.Device{Path: "/dev/sdb1", Size: 16 << 20}, ChunkSize: 4096, Times: snapstore.Times{Armed: t0.Add(3 * time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}

	code, out, errOut := w.run(t, "", "sessions", "list", "sdb1", "--json")
	if code != exitOK {
		t.Fatalf("list: exit %d: %s", code, errOut)
	}
	var list []map[string]any
	if err := decodeResult(out, &list); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(list) != 3 {
		t.Fatalf("list sdb1: %d sessions\n%s", len(list), out)
	}
	want := []struct{ id, state string }{{"sdb1_1700000000", "closed"}, {"sdb1_1700003600", "closed"}, {filepath.Base(armed), "armed"}}
	for i, s := range list {
		if s["id"] != want[i].id || s["state"] != want[i].state || s["name"] != "sdb1" || s["device"] != "/dev/sdb1" {
			t.Errorf("session %d: %v, want %v", i, s, want[i])
		}
	}
	if list[0]["blocks"] != 147.0 || list[0]["bytes"] != 147.0*4096 || list[0]["mounted"] != "2023-11-14T22:13:20Z" || list[0]["closed"] == nil {
		t.Errorf("closed session: %v", list[0])
	}
	if list[2]["blocks"] != 0.0 || list[2]["armed"] == nil || list[2]["mounted"] != nil {
		t.Errorf("armed session: %v", list[2])
	}
	if code, out, _ := w.run(t, "", "sessions", "list", "--json"); code != exitOK || strings.Count(out, `"id"`) != 4 {
		t.Errorf("list all: exit %d\n%s", code, out)
	}
	if code, out, _ := w.run(t, "", "sessions", "list"); code != exitOK || !strings.Contains(out, "sdc1_1700007200") {
		t.Errorf("list table: exit %d\n%s", code, out)
	}

	code, out, _ = w.run(t, "", "sessions", "show", "sdb1_1700003600", "--json")
	var one map[string]any
	if code != exitOK || decodeResult(out, &one) != nil || one["id"] != "sdb1_1700003600" || one["meta"] == nil {
		t.Fatalf("show: exit %d\n%s", code, out)
	}
	if code, _, errOut := w.run(t, "", "sessions", "show", "../etc"); code != exitFailure || !strings.Contains(errOut, "invalid session ID") {
		t.Errorf("show ../etc: exit %d: %s", code, errOut)
	}

	if code, out, errOut := w.run(t, "", "sessions", "verify"); code != exitOK || strings.Count(out, ": ok") != 3 {
		t.Fatalf("verify all: exit %d\n%s%s", code, out, errOut)
	} else if n := strings.Count(errOut, "dmsnap: verify: 588.0 KiB of 588.0 KiB in "); n != 3 {
		// Off a terminal, each session's progress is one line when it
		// ends (its 147 pre-images of 4 KiB).
		t.Fatalf("verify all: %d progress lines on stderr, want one per session:\n%s", n, errOut)
	}
	if code, _, errOut := w.run(t, "", "sessions", "verify", "--json"); code != exitOK || errOut != "" {
		t.Fatalf("verify --json: exit %d, stderr %q: want nothing on stderr off a terminal", code, errOut)
	}
	// Flip a bit of a pre-image: verify names the file and the record.
	dat := filepath.Join(d2, snapstore.DataFile)
	b, err := os.ReadFile(dat)
	if err != nil {
		t.Fatal(err)
	}
	s, err := snapstore.Open(d2)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := s.AllEntries()
	s.Close()
	if err != nil || len(ents) == 0 {
		t.Fatal(err)
	}
	b[ents[5].Offset+7] ^= 1
	if err := os.WriteFile(dat, b, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = w.run(t, "", "sessions", "verify", "sdb1_1700000000", "sdb1_1700003600")
	if code != exitFailure || !strings.Contains(out, "sdb1_1700003600: DAMAGED") || !strings.Contains(out, "blocks.dat") ||
		!strings.Contains(out, "record 5") || !strings.Contains(out, "sdb1_1700000000: ok") || !strings.Contains(errOut, "1 of 2") {
		t.Fatalf("verify damaged: exit %d\n%s%s", code, out, errOut)
	}
}

func TestSessionsPrune(t *testing.T) {
	w := newWorld(t)
	now := time.Now().Truncate(time.Second)
	var dirs []string
	for _, age := range []time.Duration{80 * time.Hour, 50 * time.Hour, 24 * time.Hour, time.Hour} {
		dirs = append(dirs, closedSession(t, w.store, "sdb1", now.Add(-age)))
	}
	other := closedSession(t, w.store, "sdc1", now.Add(-100*time.Hour))
	live, err := snapstore.CreateSession(w.store, snapstore.State{Name: "sdb1", Device: snapstore.Device{Path: "/dev/sdb1", Size: 16 << 20}, ChunkSize: 4096, Times: snapstore.Times{Armed: now}})
	if err != nil {
		t.Fatal(err)
	}
	exists := func(d string) bool { _, err := os.Stat(d); return err == nil }

	if code, out, _ := w.run(t, "", "sessions", "prune", "sdb1", "--older-than", "3d", "--dry-run"); code != exitOK || strings.Count(out, "would remove") != 1 || !exists(dirs[0]) {
		t.Fatalf("dry run: exit %d\n%s", code, out)
	}
	if code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--older-than", "36h"); code != exitOK || strings.Count(out, "removed") != 2 {
		t.Fatalf("prune --older-than: exit %d\n%s%s", code, out, errOut)
	}
	if exists(dirs[0]) || exists(dirs[1]) || !exists(dirs[2]) || !exists(dirs[3]) || !exists(other) || !exists(live) {
		t.Fatal("prune --older-than removed the wrong sessions")
	}
	if code, _, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--keep", "1"); code != exitOK {
		t.Fatalf("prune --keep: exit %d: %s", code, errOut)
	}
	if exists(dirs[2]) || !exists(dirs[3]) || !exists(other) || !exists(live) {
		t.Fatal("prune --keep 1 removed the wrong sessions")
	}
	// The lock is taken: a held lock makes prune wait, then give up (exit 4).
	l, err := session.AcquireLock(context.Background(), w.state, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, []string{"--state", w.state, "--store", w.store, "sessions", "prune", "sdb1", "--keep", "0"}, strings.NewReader(""), &out, &errOut)
	if code == exitOK || !exists(dirs[3]) {
		t.Fatalf("prune under a held lock: exit %d, %s", code, errOut.String())
	}
}

func TestInstallFiles(t *testing.T) {
	w := newWorld(t)
	root := t.TempDir()
	if code, _, errOut := w.run(t, "", "install-files", "--binary", "/usr/sbin/dmsnap", root); code != exitOK {
		t.Fatalf("install-files: exit %d: %s", code, errOut)
	}
	unit, err := os.ReadFile(filepath.Join(root, hostfiles.SystemdUnitPath))
	if err != nil || !strings.Contains(string(unit), "/usr/sbin/dmsnap") || !strings.Contains(string(unit), " watch") || !strings.Contains(string(unit), w.state) {
		t.Fatalf("unit: %v\n%s", err, unit)
	}
	if _, err := os.Stat(filepath.Join(root, hostfiles.UdevRulePath)); err != nil {
		t.Fatal(err)
	}
	if _, out, _ := w.run(t, "", "help"); strings.Contains(out, "install-files") {
		t.Error("install-files is listed in help; it is meant to be hidden")
	}
}

// syncWriter is a bytes.Buffer safe for the watcher's goroutines.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestWatchHandlesInvalidationAndStops(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1"); code != exitOK {
		t.Fatalf("activate: %s", errOut)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// As under systemd (Type=notify): it says READY=1 once watching.
	sock := sdnotifytest.Listen(t, "")
	t.Setenv("NOTIFY_SOCKET", sock.Addr)
	logs := &syncWriter{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--state", w.state, "--store", w.store, "watch", "--interval", "100ms", "--json-logs"},
			strings.NewReader(""), io.Discard, logs)
	}()
	if got, err := sock.Next(10 * time.Second); err != nil || !strings.Contains(got, "READY=1\n") {
		t.Fatalf("first notification %q, %v; want READY=1\n%s", got, err, logs)
	}
	if !strings.Contains(logs.String(), `"msg":"watching"`) {
		t.Fatalf("READY=1 before the watcher logged it was watching:\n%s", logs)
	}
	deadline := time.Now().Add(10 * time.Second)
	w.sys.Kernel.Invalidate("sdb1", 1)
	for {
		d := w.registry(t).Device("sdb1")
		if d.Session(1) == nil && d.Current() != nil && d.Current().N == 2 && d.Current().State == session.SessionArmed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session 1 not ended and session 2 not armed: %+v\n%s", d, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("watch: exit %d\n%s", code, logs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not stop when its context ended")
	}
	if got, err := sock.Next(10 * time.Second); err != nil || !strings.Contains(got, "STOPPING=1\n") {
		t.Fatalf("notification at the stop %q, %v; want STOPPING=1", got, err)
	}
	out := logs.String()
	for _, want := range []string{`"step":"invalidate","device":"sdb1","session":1`, `"msg":"stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("watcher log lacks %s:\n%s", want, out)
		}
	}
	dirs := w.sys.Store.Sessions(w.store)
	if len(dirs) != 2 {
		t.Fatalf("store: %v", dirs)
	}
	invalid := 0
	for _, d := range dirs {
		if m, err := sessiontest.ReadMeta(filepath.Join(w.store, d)); err == nil && m.Final == "invalid" {
			invalid++
		}
	}
	if invalid != 1 {
		t.Fatalf("store %v: %d sessions kept as invalid, want 1", dirs, invalid)
	}
}

func TestAttachAfterReboot(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1"); code != exitOK {
		t.Fatalf("activate: %s", errOut)
	}
	before := *w.registry(t).Device("sdb1").Current()
	w.sys.Reboot()
	if code, out, _ := w.run(t, "", "status"); code != exitOK || !strings.Contains(out, "stack:    none") || !strings.Contains(out, "dmsnap attach /dev/sdb1") {
		t.Errorf("status after reboot: exit %d\n%s", code, out)
	}
	code, out, errOut := w.run(t, "", "attach", "/dev/sdb1")
	if code != exitOK || !strings.Contains(out, "stack-up") || !strings.Contains(out, "attach") {
		t.Fatalf("attach: exit %d\n%s%s", code, out, errOut)
	}
	after := w.registry(t).Device("sdb1").Current()
	if after == nil || after.N != before.N || after.Dir != before.Dir || after.State != session.SessionArmed {
		t.Fatalf("session after attach: %+v, before %+v", after, before)
	}
	if got := w.sys.Kernel.Snapshots("sdb1"); len(got) != 1 || got[0] != before.N {
		t.Fatalf("snapshots after attach: %v", got)
	}
	// Attaching again changes nothing; an unknown device is an error.
	w.sys.ResetCalls()
	if code, _, _ := w.run(t, "", "attach", "/dev/sdb1"); code != exitOK || len(w.sys.Calls) != 0 {
		t.Errorf("second attach: exit %d, calls %v", code, w.sys.Calls)
	}
	if code, _, errOut := w.run(t, "", "attach", "/dev/sdz9"); code != exitFailure || !strings.Contains(errOut, "/dev/sdz9") {
		t.Errorf("attach of an unknown device: exit %d: %s", code, errOut)
	}
}

// Regression: a dangling link where the password file belongs meant "no
// password", so anyone able to break the file turned the password off. Now
// every command that needs it is refused, and `dmsnap passwd` cannot
// replace it either: root removes it, as the error says.
func TestUntrustedPasswordFileRefuses(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	path := w.passwd
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(t.TempDir(), "gone"), path); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"activate", "/dev/sdb1", "--password-stdin"},
		{"passwd", "--password-stdin"},
		{"passwd", "--password-stdin", "--clear"},
	} {
		code, _, errOut := w.run(t, "anything\nnew-one\n", args...)
		if code != exitFailure || !strings.Contains(errOut, path) || !strings.Contains(errOut, "rm "+path) {
			t.Errorf("dmsnap %q with a dangling password link: exit %d: %s", args, code, errOut)
		}
	}
	if len(w.sys.Calls) != 0 || len(w.registry(t).Devices) != 0 {
		t.Errorf("a refused command changed things: calls %v", w.sys.Calls)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced or removed: %v %v", fi, err)
	}
}

// Regression: the password file was <--state>/passwd, so
// `dmsnap --state /tmp/x deactivate NAME` found none and asked for nothing.
// It is the host's now, whatever --state says.
func TestPasswordIgnoresState(t *testing.T) {
	if got := newSecret().Path; got != "/var/lib/dmsnap/passwd" {
		t.Fatalf("the CLI's control password is %s, want /var/lib/dmsnap/passwd", got)
	}
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	if code, _, errOut := w.run(t, "hunter2\n", "passwd", "--password-stdin"); code != exitOK {
		t.Fatalf("passwd: exit %d: %s", code, errOut)
	}
	if code, _, errOut := w.run(t, "hunter2\n", "activate", "/dev/sdb1", "--password-stdin"); code != exitOK {
		t.Fatalf("activate: exit %d: %s", code, errOut)
	}
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--state", t.TempDir(), "--store", w.store, "deactivate", "sdb1", "--password-stdin"},
		strings.NewReader("guess\n"), &out, &errOut)
	if code != exitBadPassword {
		t.Fatalf("deactivate with another --state and a wrong password: exit %d: %s", code, errOut.String())
	}
}
