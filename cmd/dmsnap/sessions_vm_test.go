//go:build vm

package main

// End-to-end tests of the session commands: the real dmsnap binary
// (/usr/bin/dmsnap, copied in by hack/vm/exec after `make build`) against
// the guest's kernel, with store and state under /tmp (tmpfs) and ext4 on
// loop devices over small sparse files.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/passwd"
	"github.com/dmsnap/dmsnap/internal/sdnotify/sdnotifytest"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/snapstore"
)

const dmsnapBin = "/usr/bin/dmsnap"

// cli is one state directory and store the dmsnap binary runs with.
type cli struct {
	state, store string
	prealloc     string // activate's --prealloc ("": the default)
}

// testPrealloc is what the tests' activations write ahead of each COW: less
// than their sessions use, so that their COW files have both kinds of
// segment (dm.AttachCOW), mapped straight to the store's device and through
// its filesystem, and conversion and restore read across the two.
const testPrealloc = "8MiB"

// storeFS is the filesystem of the tests' stores: ext4 (as /snapshot on
// most machines), or what DMSNAP_TEST_STORE_FS says (xfs, tmpfs).
func storeFS() string {
	if fs := os.Getenv("DMSNAP_TEST_STORE_FS"); fs != "" {
		return fs
	}
	return "ext4"
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	vmtest.RequireDM(t)
	if _, err := os.Stat(dmsnapBin); err != nil {
		t.Fatalf("%s missing: run `make build-test` before the VM tests (%v)", dmsnapBin, err)
	}
	base := t.TempDir()
	fs := vmtest.StoreFS(t, base, storeFS(), 2<<30)
	return &cli{state: filepath.Join(base, "state"), store: filepath.Join(fs, "store"), prealloc: testPrealloc}
}

func (c *cli) cmd(stdin string, args ...string) *exec.Cmd {
	cmd := exec.Command(dmsnapBin, append([]string{"--state", c.state, "--store", c.store}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	return cmd
}

// try runs dmsnap and returns its exit code and output.
func (c *cli) try(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := c.cmd(stdin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("dmsnap %q: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// ok runs dmsnap and fails the test unless it exits 0.
func (c *cli) ok(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := c.try(t, "", args...)
	if code != 0 {
		t.Fatalf("dmsnap %q: exit %d\n%s%s", args, code, out, errOut)
	}
	return out
}

// activate activates raw as name and makes sure the test leaves no stack
// behind, whatever happens: another test's watcher would take it for an
// orphan.
func (c *cli) activate(t *testing.T, raw, name string) {
	t.Helper()
	args := []string{"activate", raw, "--name", name}
	if c.prealloc != "" {
		args = append(args, "--prealloc", c.prealloc)
	}
	c.ok(t, args...)
	t.Cleanup(func() {
		exec.Command("umount", "/dev/mapper/dmsnap-"+name).Run()
		if active, _ := (dm.Stack{Name: name}).Active(); !active {
			return
		}
		if code, out, errOut := c.try(t, "", "deactivate", name); code != 0 {
			t.Errorf("cleanup: deactivate %s: exit %d: %s%s", name, code, out, errOut)
			(dm.Stack{Name: name}).Teardown()
		}
	})
}

// dropCaches makes reads of a raw device see what device-mapper wrote to
// it, not what its own page cache held from before.
func dropCaches(t *testing.T) {
	t.Helper()
	vmtest.Sh(t, "sync; echo 3 > /proc/sys/vm/drop_caches")
}

// watcher is a running `dmsnap watch`.
type watcher struct {
	cmd *exec.Cmd
	log *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (c *cli) watch(t *testing.T) *watcher {
	t.Helper()
	return c.watchEnv(t)
}

// watchEnv starts a watcher with env added to its environment.
func (c *cli) watchEnv(t *testing.T, env ...string) *watcher {
	t.Helper()
	w := &watcher{cmd: c.cmd("", "watch", "--interval", "1s"), log: &syncBuffer{}}
	// It runs as under systemd (Type=notify), with a $NOTIFY_SOCKET.
	sock := sdnotifytest.Listen(t, "")
	w.cmd.Env = append(os.Environ(), append(env, "NOTIFY_SOCKET="+sock.Addr)...)
	w.cmd.Stdout, w.cmd.Stderr = w.log, w.log
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if w.cmd.ProcessState == nil {
			w.cmd.Process.Kill()
			w.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("watcher log:\n%s", w.log.String())
		}
	})
	// Mounts before the watcher has read the mount table are not events to
	// it (the session stays armed and takes them): wait until it says it
	// is watching, as systemd does before it starts the units after it.
	if got, err := sock.Next(60 * time.Second); err != nil || !strings.Contains(got, "READY=1\n") {
		t.Fatalf("the watcher did not say READY=1 on $NOTIFY_SOCKET: %q, %v\n%s", got, err, w.log.String())
	}
	if !strings.Contains(w.log.String(), "msg=watching") {
		t.Fatalf("READY=1 before the watcher logged it was watching:\n%s", w.log.String())
	}
	return w
}

// stop sends SIGTERM and checks the watcher exits 0.
func (w *watcher) stop(t *testing.T) {
	t.Helper()
	w.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- w.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("watcher after SIGTERM: %v\n%s", err, w.log.String())
		}
	case <-time.After(20 * time.Second):
		w.cmd.Process.Kill()
		t.Fatalf("watcher did not stop on SIGTERM\n%s", w.log.String())
	}
}

func (w *watcher) kill(t *testing.T) {
	t.Helper()
	w.cmd.Process.Kill()
	w.cmd.Wait()
}

// rawDevice makes ext4 on a loop device over a sparse file of size bytes.
func rawDevice(t *testing.T, size int64) string {
	t.Helper()
	file := vmtest.TempFile(t, t.TempDir(), "raw.img", size)
	l, err := dm.AttachLoop(file, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	t.Cleanup(func() { dm.DetachLoop(l.Path) })
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", l.Path)
	return l.Path
}

type listed struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	Dir           string `json:"dir"`
	State         string `json:"state"`
	InvalidReason string `json:"invalid_reason"`
	Blocks        int64  `json:"blocks"`
	Bytes         int64  `json:"bytes"`
}

func (c *cli) list(t *testing.T, name string) []listed {
	t.Helper()
	var out []listed
	if err := decodeResult(c.ok(t, "sessions", "list", name, "--json"), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

type statusOut struct {
	Devices []struct {
		Name  string `json:"name"`
		Stack *struct {
			Complete bool `json:"complete"`
		} `json:"stack"`
		MountedOn []string `json:"mounted_on"`
		Sessions  []struct {
			N        int    `json:"n"`
			Dir      string `json:"dir"`
			State    string `json:"state"`
			Snapshot *struct {
				State   string `json:"state"`
				CowUsed uint64 `json:"cow_used_bytes"`
			} `json:"snapshot"`
			CowDirectIO  *bool   `json:"cow_direct_io"`
			CowTailWT    *bool   `json:"cow_tail_write_through"`
			CowFastBytes *uint64 `json:"cow_fast_bytes"`
			CowUnmapped  string  `json:"cow_unmapped_reason"`
			CowRoute     string  `json:"cow_route"`
			CowHeadroom  *uint64 `json:"cow_fast_headroom_bytes"`
		} `json:"sessions"`
		InvalidSessions []string `json:"invalid_sessions"`
		Error           string   `json:"error"`
	} `json:"devices"`
}

func (c *cli) status(t *testing.T) statusOut {
	t.Helper()
	var st statusOut
	out := c.ok(t, "status", "--json")
	if err := decodeResult(out, &st); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return st
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func countStates(ss []listed) map[string]int {
	n := map[string]int{}
	for _, s := range ss {
		n[s.State]++
	}
	return n
}

func mountWriteUnmount(t *testing.T, dev, mnt string, i int) {
	t.Helper()
	vmtest.Run(t, "mount", dev, mnt)
	vmtest.Sh(t, fmt.Sprintf("dd if=/dev/urandom of=%s/f%d bs=64k count=8 2>/dev/null && echo %d >> %s/log && sync", mnt, i, i, mnt))
	vmtest.Run(t, "umount", mnt)
}

// dmsnapDevices lists the device-mapper devices whose name starts dmsnap-.
func dmsnapDevices(t *testing.T) []string {
	t.Helper()
	items, err := dm.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, it := range items {
		if strings.HasPrefix(it.Name, dm.Prefix) {
			out = append(out, it.Name)
		}
	}
	return out
}

func TestCLISessionsThreeMounts(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 64<<20)
	c.activate(t, raw, "vol")
	w := c.watch(t)
	origin := "/dev/mapper/dmsnap-vol"
	mnt := t.TempDir()
	for i := 1; i <= 3; i++ {
		mountWriteUnmount(t, origin, mnt, i)
		eventually(t, fmt.Sprintf("session %d closed", i), 60*time.Second, func() bool {
			n := countStates(c.list(t, "vol"))
			return n["closed"] == i && n["armed"] == 1
		})
	}
	ss := c.list(t, "vol")
	if len(ss) != 4 {
		t.Fatalf("sessions: %+v", ss)
	}
	idRe := regexp.MustCompile(`^vol_[0-9]{10}$`)
	var ids []string
	for i, s := range ss {
		if !idRe.MatchString(s.ID) || s.Dir != filepath.Join(c.store, s.ID) {
			t.Errorf("session %d: id %q dir %q", i, s.ID, s.Dir)
		}
		if i < 3 {
			if s.State != "closed" || s.Blocks == 0 || s.Bytes != s.Blocks*4096 {
				t.Errorf("session %d: %+v", i, s)
			}
			for _, f := range []string{"blocks.dat", "blocks.map", "meta.json"} {
				if _, err := os.Stat(filepath.Join(s.Dir, f)); err != nil {
					t.Error(err)
				}
			}
			ids = append(ids, s.ID)
		} else if s.State != "armed" {
			t.Errorf("last session: %+v, want armed", s)
		}
	}
	out := c.ok(t, append([]string{"sessions", "verify"}, ids...)...)
	if strings.Count(out, ": ok") != 3 {
		t.Errorf("verify:\n%s", out)
	}
	st := c.status(t)
	if len(st.Devices) != 1 || len(st.Devices[0].Sessions) != 1 || st.Devices[0].Sessions[0].State != "armed" ||
		st.Devices[0].Sessions[0].Snapshot == nil || st.Devices[0].Sessions[0].CowFastBytes == nil {
		t.Errorf("status: %+v", st)
	} else if s := st.Devices[0].Sessions[0]; (*s.CowFastBytes == 0) != (s.CowUnmapped != "") ||
		(storeFS() == "tmpfs") != (s.CowUnmapped != "") {
		// Only a store that cannot be mapped (tmpfs here) gives a reason;
		// the kernel's write open of the mounted store device goes through.
		t.Errorf("store on %s: %d bytes mapped straight, unmapped because %q", storeFS(), *s.CowFastBytes, s.CowUnmapped)
	} else if mapped := *s.CowFastBytes > 0; mapped != (s.CowRoute == "loop") || mapped != (s.CowHeadroom != nil) {
		// The test's store is on a loop device, not device-mapper: the
		// mapped part goes through a loop device over it.
		t.Errorf("store on %s: route %q, headroom %v of %d bytes mapped", storeFS(), s.CowRoute, s.CowHeadroom, *s.CowFastBytes)
	}
	w.stop(t)
	if log := w.log.String(); !strings.Contains(log, "device=vol") {
		t.Errorf("watcher log has no device attribute:\n%s", log)
	}
	c.ok(t, "deactivate", "vol")
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Errorf("left after deactivate: %v", left)
	}
	if n := countStates(c.list(t, "vol")); n["closed"] < 3 || n["armed"] != 0 || len(n) != 1 {
		t.Errorf("after deactivate: %v, want only closed sessions", n)
	}
}

func TestCLIRefusals(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 32<<20)

	// Wrong password: exit 3, nothing changed.
	// The secret is set with cheap Argon2 parameters (Verify uses those
	// stored with the hash): the default 64 MiB, 3 passes take long under
	// software emulation. `dmsnap passwd` itself is tested on the host.
	// The password is the guest's (passwd.Path, whatever --state
	// says): removed at the end, so that the tests after this one in the
	// same guest find none, even if this one fails half-way.
	sec := passwd.New()
	sec.Params = passwd.Argon2Params{Time: 1, MemoryKiB: 1024, Threads: 1, SaltLen: 16, KeyLen: 32}
	t.Cleanup(func() {
		if err := os.Remove(sec.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("remove the guest's control password: %v", err)
		}
	})
	if err := sec.Set([]byte("s3cret")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, _, errOut := c.try(t, "guess\n", "activate", raw, "--name", "r", "--password-stdin")
	if code != 3 || !strings.Contains(errOut, "wrong password") || time.Since(start) < time.Second {
		t.Fatalf("wrong password: exit %d after %v: %s", code, time.Since(start), errOut)
	}
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Fatalf("devices after a wrong password: %v", left)
	}
	if _, err := os.Stat(filepath.Join(c.state, "registry.json")); err == nil {
		if b, _ := os.ReadFile(filepath.Join(c.state, "registry.json")); bytes.Contains(b, []byte(`"r"`)) {
			t.Fatalf("registry after a wrong password: %s", b)
		}
	}
	if code, _, errOut := c.try(t, "s3cret\n", "passwd", "--password-stdin", "--clear"); code != 0 {
		t.Fatalf("passwd --clear with the right password: %d %s", code, errOut)
	}

	// A mounted device: exit 4, nothing left behind.
	mnt := t.TempDir()
	vmtest.Run(t, "mount", raw, mnt)
	code, _, errOut = c.try(t, "", "activate", raw, "--name", "r")
	vmtest.Run(t, "umount", mnt)
	if code != 4 || !strings.Contains(errOut, "mounted on "+mnt) {
		t.Fatalf("activate of a mounted device: exit %d: %s", code, errOut)
	}
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Fatalf("devices after refusing a mounted device: %v", left)
	}

	// A directory (neither a block device nor an image file): a clear error.
	dir := t.TempDir()
	code, _, errOut = c.try(t, "", "activate", dir)
	if code != 1 || !strings.Contains(errOut, dir) || !strings.Contains(errOut, "block device") || !strings.Contains(errOut, "image file") {
		t.Fatalf("activate of a directory: exit %d: %s", code, errOut)
	}
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Fatalf("devices after refusing a directory: %v", left)
	}

	t.Logf("refusals took %v", time.Since(start))
	// Two activations racing on one device: one wins, one fails cleanly.
	type result struct {
		code   int
		stderr string
	}
	res := make([]result, 2)
	var wg sync.WaitGroup
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var errOut bytes.Buffer
			cmd := c.cmd("", "activate", raw, "--name", fmt.Sprintf("race%d", i))
			cmd.Stderr = &errOut
			err := cmd.Run()
			res[i].stderr = errOut.String()
			if ee, ok := err.(*exec.ExitError); ok {
				res[i].code = ee.ExitCode()
			}
		}()
	}
	wg.Wait()
	t.Logf("race: %+v", res)
	t.Cleanup(func() {
		for _, n := range []string{"race0", "race1"} {
			if active, _ := (dm.Stack{Name: n}).Active(); active {
				c.try(t, "", "deactivate", n)
			}
		}
	})
	wins := 0
	for _, r := range res {
		switch {
		case r.code == 0:
			wins++
		case r.code != 1 && r.code != 4, !strings.Contains(r.stderr, raw):
			t.Errorf("losing activate: exit %d: %s", r.code, r.stderr)
		}
	}
	if wins != 1 {
		t.Fatalf("racing activations: %+v", res)
	}
	st := c.status(t)
	if len(st.Devices) != 1 || st.Devices[0].Stack == nil || !st.Devices[0].Stack.Complete {
		t.Fatalf("after the race: %+v", st)
	}
	if n := len(dmsnapDevices(t)); n != 4 { // origin, -real, one snapshot and its COW device
		t.Errorf("after the race: dm devices %v", dmsnapDevices(t))
	}
	c.ok(t, "deactivate", raw)
}

func TestCLIWatcherKilledMidSession(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 32<<20)
	c.activate(t, raw, "k")
	origin := "/dev/mapper/dmsnap-k"
	dropCaches(t)
	pre, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	w := c.watch(t)
	mnt := t.TempDir()
	vmtest.Run(t, "mount", origin, mnt)
	eventually(t, "session open", 30*time.Second, func() bool {
		st := c.status(t)
		return len(st.Devices) == 1 && len(st.Devices[0].Sessions) == 1 && st.Devices[0].Sessions[0].State == "open"
	})
	vmtest.Sh(t, "dd if=/dev/urandom of="+mnt+"/a bs=64k count=16 2>/dev/null; sync")
	w.kill(t)
	vmtest.Sh(t, "dd if=/dev/urandom of="+mnt+"/b bs=64k count=16 2>/dev/null; rm "+mnt+"/a; sync")
	w = c.watch(t)
	vmtest.Sh(t, "dd if=/dev/urandom of="+mnt+"/c bs=64k count=4 2>/dev/null; sync")
	vmtest.Run(t, "umount", mnt)
	var closed listed
	eventually(t, "session closed", 60*time.Second, func() bool {
		for _, s := range c.list(t, "k") {
			if s.State == "closed" {
				closed = s
				return true
			}
		}
		return false
	})
	w.stop(t)
	c.ok(t, "sessions", "verify", closed.ID)
	dropCaches(t)

	// Every pre-image is there: the device rebuilt from the session equals
	// the device before the mount, byte for byte.
	s, err := snapstore.Open(closed.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cur, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	rc, err := snapstore.NewReconstructor(cur, int64(len(pre)), s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(rc, 0, rc.Size()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pre) {
		t.Fatal("the device rebuilt from the session differs from the device before the mount")
	}
	now, _ := os.ReadFile(raw)
	if bytes.Equal(now, pre) {
		t.Fatal("the writes did not reach the device")
	}
	c.ok(t, "deactivate", "k")
}

// TestCLIAttachAfterReboot: the stack goes (a reboot) with pre-images in
// the armed session's COW, on both of its kinds of segment (the first 8 MiB
// mapped straight to the ext4 store's device, the rest in cow.tail through
// the filesystem); `dmsnap attach` folds the tail back and brings the COW
// back with every exception, and the session rebuilds the device as it
// was. Meanwhile cow.img cannot be removed (it is pinned immutable), and a
// read of it through the page cache while the kernel writes beneath the
// filesystem does not make the conversion read stale pages.
func TestCLIAttachAfterReboot(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 32<<20)
	c.activate(t, raw, "b")
	dropCaches(t)
	pre, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	origin := "/dev/mapper/dmsnap-b"
	// Raw writes while unmounted land in the armed session: 3000 chunks,
	// 12 MiB of pre-images, more than the 8 MiB mapped straight.
	vmtest.Sh(t, "dd if=/dev/urandom of="+origin+" bs=4k seek=100 count=3000 conv=fsync 2>/dev/null")
	before := c.status(t).Devices[0].Sessions[0]
	if before.Snapshot == nil || before.Snapshot.CowUsed < 11<<20 || before.CowTailWT == nil || !*before.CowTailWT ||
		before.CowFastBytes == nil || *before.CowFastBytes != 8<<20 {
		t.Fatalf("before: %+v (want 11 MiB or more of COW in use, 8 MiB of the COW mapped to the store's device, the rest to cow.tail through a write-through loop device)", before)
	}
	cow := filepath.Join(before.Dir, "cow.img")
	if err := os.Remove(cow); err == nil || !errors.Is(err, syscall.EPERM) {
		t.Fatalf("removing the armed session's cow.img: %v, want EPERM (pinned)", err)
	}
	// Cache cow.img's first pages (header, first metadata area, pre-images)
	// as they are on disk now.
	vmtest.Sh(t, "dd if="+cow+" of=/dev/null bs=1M count=16 2>/dev/null")

	// "Reboot": the tables go, the registry and the store stay.
	if err := (dm.Stack{Name: "b"}).Teardown(); err != nil {
		t.Fatal(err)
	}
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Fatalf("after teardown: %v", left)
	}
	// As systemd's dmsnap-attach@.service runs it: by the sysfs directory.
	c.ok(t, "attach", "/sys/class/block/"+filepath.Base(raw))
	st := c.status(t)
	if len(st.Devices) != 1 || st.Devices[0].Stack == nil || !st.Devices[0].Stack.Complete || len(st.Devices[0].Sessions) != 1 {
		t.Fatalf("after attach: %+v", st)
	}
	after := st.Devices[0].Sessions[0]
	if after.N != before.N || after.Dir != before.Dir || after.State != "armed" || after.Snapshot == nil ||
		after.Snapshot.State != "active" || after.Snapshot.CowUsed != before.Snapshot.CowUsed || after.CowTailWT == nil || !*after.CowTailWT {
		t.Fatalf("session after attach: %+v, before: %+v", after, before)
	}
	// After the reboot everything of cow.img that is written is mapped
	// straight: the prefix and what went through the filesystem before.
	if after.CowFastBytes == nil || *after.CowFastBytes < before.Snapshot.CowUsed {
		t.Fatalf("after attach %v bytes mapped straight, want at least the %d in use", after.CowFastBytes, before.Snapshot.CowUsed)
	}
	// More pre-images after the attach, now through the mapped segments.
	vmtest.Sh(t, "dd if=/dev/urandom of="+origin+" bs=4k seek=4000 count=500 conv=fsync 2>/dev/null")
	// A second attach does nothing.
	c.ok(t, "attach", raw)

	// The re-attached session still holds the pre-images written before.
	c.ok(t, "deactivate", "b")
	dropCaches(t)
	ss := c.list(t, "b")
	if len(ss) != 1 || ss[0].State != "closed" || ss[0].Blocks != 3500 {
		t.Fatalf("sessions: %+v (want one closed, of 3500 chunks)", ss)
	}
	if fi, err := os.Stat(filepath.Join(ss[0].Dir, "blocks.dat")); err != nil || fi.Size() > 20<<20 {
		t.Fatalf("blocks.dat: %v, %v (the preallocated zeros it did not use are cut off)", fi, err)
	}
	c.ok(t, "sessions", "verify", ss[0].ID)
	s, err := snapstore.Open(ss[0].Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cur, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	rc, err := snapstore.NewReconstructor(cur, int64(len(pre)), s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(rc, 0, rc.Size()))
	if err != nil || !bytes.Equal(got, pre) {
		t.Fatalf("device rebuilt from the re-attached session differs from the device before it (%v)", err)
	}
}

func TestCLIStoreFills(t *testing.T) {
	c := newCLI(t)
	// The store on a 4 MiB tmpfs, most of it taken by a filler file.
	if err := os.MkdirAll(c.store, 0o755); err != nil {
		t.Fatal(err)
	}
	vmtest.Run(t, "mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", c.store) // a tmpfs root is 1777 by default, which dmsnap refuses as a store
	t.Cleanup(func() { exec.Command("umount", "-l", c.store).Run() })
	filler := filepath.Join(c.store, "filler")
	vmtest.Sh(t, "dd if=/dev/zero of="+filler+" bs=64k count=40 2>/dev/null")

	raw := rawDevice(t, 32<<20)
	c.activate(t, raw, "f")
	if out := c.ok(t, "status"); !strings.Contains(out, "COW: through the store's filesystem (") || !strings.Contains(out, "is not ext2/3/4 or xfs") {
		t.Errorf("status does not say why the COW on a tmpfs store goes through the file:\n%s", out)
	}
	w := c.watch(t)
	mnt := t.TempDir()
	origin := "/dev/mapper/dmsnap-f"
	vmtest.Run(t, "mount", origin, mnt)
	// 8 MiB of new data overwrite more chunks than the store holds.
	vmtest.Sh(t, "dd if=/dev/urandom of="+mnt+"/big bs=64k count=128 2>/dev/null; sync")
	vmtest.Sh(t, "dd if=/dev/urandom of="+mnt+"/big bs=64k count=128 conv=notrunc 2>/dev/null; sync")
	eventually(t, "session flagged invalid", 60*time.Second, func() bool {
		st := c.status(t)
		if len(st.Devices) != 1 {
			return false
		}
		for _, s := range st.Devices[0].Sessions {
			if s.State == "invalid" {
				return true
			}
		}
		return len(st.Devices[0].InvalidSessions) > 0
	})
	if out := c.ok(t, "status"); !strings.Contains(out, "INVALID") {
		t.Errorf("status does not say the session is invalid:\n%s", out)
	}
	// The device stays usable.
	vmtest.Sh(t, "echo still-here > "+mnt+"/after && sync && grep -q still-here "+mnt+"/after")

	// Space returns: a fresh session is armed (and opened, as the device is mounted).
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a fresh session", 60*time.Second, func() bool {
		st := c.status(t)
		if len(st.Devices) != 1 {
			return false
		}
		for _, s := range st.Devices[0].Sessions {
			if (s.State == "open" || s.State == "armed") && s.Snapshot != nil && s.Snapshot.State == "active" {
				return true
			}
		}
		return false
	})
	vmtest.Run(t, "umount", mnt)
	// The invalid session is kept and flagged; the one armed when space
	// returned closed normally; failed attempts to arm left nothing behind.
	eventually(t, "the invalid session kept and flagged", 60*time.Second, func() bool {
		n := countStates(c.list(t, "f"))
		return n["invalid"] == 1 && n["closed"] == 1 && n["armed"] == 1
	})
	if n := countStates(c.list(t, "f")); len(n) != 3 {
		t.Errorf("sessions: %v, want one invalid, one closed, one armed", n)
	}
	eventually(t, "the watcher to report the invalid session", 30*time.Second, func() bool {
		return strings.Contains(w.log.String(), "session kept as invalid")
	})
	w.stop(t)
	if testing.Verbose() {
		t.Logf("watcher log:\n%s", w.log.String())
	}
	if log := w.log.String(); !strings.Contains(log, "level=ERROR msg=\"session kept as invalid") || !strings.Contains(log, "device=f") {
		t.Errorf("watcher log does not mention the invalidation:\n%s", log)
	}
	c.ok(t, "deactivate", "f")
	vmtest.Run(t, "e2fsck", "-fn", raw)
}

// TestCLIWatcherGrowsCOW: a session with twelve times --prealloc of
// pre-images, written while the watcher runs. Where the store can be mapped
// the watcher writes the COW ahead and maps it as the pre-images come ("COW
// grown" in its log) and the status shows far more than --prealloc mapped
// straight (half the pre-images or more: where the writer outruns the
// watcher's poll under emulation, the kernel writes a step through the tail
// before the watcher maps past it, and that step stays unmapped); on tmpfs
// nothing is. Either way the session restores the device
// byte for byte.
func TestCLIWatcherGrowsCOW(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 160<<20)
	c.activate(t, raw, "g")
	dropCaches(t)
	pre := hash(t, raw)
	w := c.watch(t)
	origin, mnt := "/dev/mapper/dmsnap-g", t.TempDir()
	vmtest.Run(t, "mount", origin, mnt)
	// 96 MiB in files of 8 MiB, each made durable: the pre-images of the
	// blocks they overwrite (mkfs left the device sparse: zeros) and of
	// the metadata.
	for i := range 12 {
		vmtest.Sh(t, fmt.Sprintf("dd if=/dev/urandom of=%s/f%d bs=1M count=8 conv=fsync 2>/dev/null", mnt, i))
	}
	mapped := storeFS() != "tmpfs"
	fast := func() uint64 {
		ss := c.status(t).Devices[0].Sessions
		if len(ss) != 1 || ss[0].CowFastBytes == nil {
			t.Fatalf("status: %+v", ss)
		}
		return *ss[0].CowFastBytes
	}
	if mapped {
		eventually(t, "48 MiB of the COW mapped (six times --prealloc)", 60*time.Second, func() bool { return fast() >= 48<<20 })
		if n := strings.Count(w.log.String(), `msg="COW grown"`); n < 3 {
			t.Fatalf("%d grows logged:\n%s", n, w.log.String())
		}
	} else if f := fast(); f != 0 {
		t.Fatalf("%d bytes mapped straight on a %s store", f, storeFS())
	}
	t.Logf("%d MiB of the COW mapped straight; watcher log:\n%s", fast()>>20, w.log.String())
	vmtest.Run(t, "umount", mnt)
	eventually(t, "session 1 closed", 120*time.Second, func() bool { return countStates(c.list(t, "g"))["closed"] == 1 })
	w.stop(t)
	ss := c.list(t, "g")
	if ss[0].State != "closed" || ss[0].Bytes < 96<<20 {
		t.Fatalf("sessions: %+v (want the first closed, with 96 MiB of pre-images or more)", ss)
	}
	c.ok(t, "sessions", "verify", ss[0].ID)
	c.ok(t, "restore", "g", "--session", ss[0].ID, "--yes")
	if got := hash(t, raw); got != pre {
		t.Fatalf("after the restore the device hashes %s, before the session %s", got, pre)
	}
}
