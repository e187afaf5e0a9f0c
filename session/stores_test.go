package session_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/devnum"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/storedev"
	"github.com/dmsnap/dmsnap/storedev/storedevtest"
)

// The managed stores' life: create records the store and writes its
// udev rule; after a reboot, EnsureUsed brings back the store a device
// uses and records its new number; RequireUp refuses it while it is down;
// a held lock changes nothing.
func TestManagedStores(t *testing.T) {
	w := newWorld(t)
	h, disk := storedevtest.New(t, 80<<20)
	rule := filepath.Join(t.TempDir(), "89-dmsnap-store.rules")
	var warnings []string
	ms := &session.ManagedStores{StateDir: w.state, Host: h, Rule: rule, LockWait: time.Second,
		Warn: func(m string) { warnings = append(warnings, m) }}

	rec, err := ms.Create(bgctx, storedev.CreateRequest{Device: disk, Path: w.store, FS: "ext4", Now: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := storedev.LoadRecords(w.state)
	if err != nil || len(rs.Stores) != 1 || rs.Stores[0] != rec {
		t.Fatalf("stores.json after create: %+v, %v", rs, err)
	}
	if b, err := os.ReadFile(rule); err != nil || !strings.Contains(string(b), `ENV{MAJOR}=="8", ENV{MINOR}=="17", GOTO="dmsnap_store_up"`) {
		t.Fatalf("rule after create: %v\n%s", err, b)
	}
	list, err := ms.List()
	if err != nil || len(list) != 1 || !list[0].Mounted || list[0].Path != w.store {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if err := ms.RequireUp(w.store); err != nil {
		t.Fatalf("RequireUp of a mounted store: %v", err)
	}

	// A device activated with the store.
	if _, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store}); err != nil {
		t.Fatal(err)
	}

	// A reboot: nothing is up, and the store's device has a new number.
	h.Wraps, h.Mounts, h.Calls = map[string]devnum.Dev{}, map[string]devnum.Dev{}, nil
	h.Devs[disk] = devnum.Dev{Major: 8, Minor: 33}
	if err := ms.RequireUp(w.store); err == nil || !strings.Contains(err.Error(), "is a managed store that is not mounted: `dmsnap store up "+disk+"`") {
		t.Fatalf("RequireUp of a store that is down: %v", err)
	}
	ms.EnsureUsed(bgctx, time.Second)
	if _, ok := h.Mounts[w.store]; !ok || len(warnings) != 0 {
		t.Fatalf("EnsureUsed did not bring the store up: mounts %v, warnings %q", h.Mounts, warnings)
	}
	rs, _ = storedev.LoadRecords(w.state)
	if rs.Stores[0].Dev != (devnum.Dev{Major: 8, Minor: 33}) {
		t.Fatalf("the new number is not recorded: %+v", rs.Stores[0])
	}
	if b, _ := os.ReadFile(rule); !strings.Contains(string(b), `ENV{MINOR}=="33"`) {
		t.Fatalf("the rule does not follow the new number:\n%s", b)
	}

	// Up of a store that is up changes nothing.
	h.Calls = nil
	if _, err := ms.Up(bgctx, disk); err != nil || len(h.Calls) != 0 {
		t.Fatalf("up of a mounted store: %v, calls %v", err, h.Calls)
	}

	// The stores' lock held by another command: refused, nothing written.
	l, err := session.AcquireLockFile(bgctx, filepath.Join(w.state, storedev.LockFile), session.NoLockWait)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	ms.LockWait = session.NoLockWait
	h2, disk2 := storedevtest.New(t, 80<<20)
	ms.Host = h2
	_, err = ms.Create(bgctx, storedev.CreateRequest{Device: disk2, Path: filepath.Join(t.TempDir(), "s2"), FS: "ext4"})
	if !errors.Is(err, session.ErrLocked) || len(h2.Calls) != 0 {
		t.Fatalf("create under a held lock: %v, calls %v", err, h2.Calls)
	}
}

// EnsureUsed gives up after its wait on a store whose device is not there,
// with a warning naming it, and leaves stores no device uses alone.
func TestEnsureUsedWarns(t *testing.T) {
	w := newWorld(t)
	h, disk := storedevtest.New(t, 80<<20)
	var warnings []string
	ms := &session.ManagedStores{StateDir: w.state, Host: h, Warn: func(m string) { warnings = append(warnings, m) }}
	if _, err := ms.Create(bgctx, storedev.CreateRequest{Device: disk, Path: w.store, FS: "xfs"}); err != nil {
		t.Fatal(err)
	}
	h.Wraps, h.Mounts, h.Calls = map[string]devnum.Dev{}, map[string]devnum.Dev{}, nil
	ms.EnsureUsed(bgctx, 0)
	if len(h.Calls) != 0 || len(warnings) != 0 {
		t.Fatalf("a store no device uses: calls %v, warnings %q", h.Calls, warnings)
	}
	// Activate itself does not check managed stores (the CLI does,
	// through RequireUp); the device now uses the store.
	if _, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store}); err != nil {
		t.Fatal(err)
	}
	delete(h.Devs, disk) // the device is gone
	if err := os.Remove(disk); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(bgctx, 10*time.Second)
	defer cancel()
	ms.EnsureUsed(ctx, 1500*time.Millisecond)
	if d := time.Since(start); d < time.Second {
		t.Fatalf("EnsureUsed gave up after %v, want a wait of 1.5 s", d)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "managed store "+w.store+" is not mounted") {
		t.Fatalf("warnings %q", warnings)
	}
}
