package restore

import (
	"errors"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/snapstore"
)

type fakeDevice struct {
	path    string
	busy    string
	busyErr error
	id      Identity
	idErr   error
}

func (d *fakeDevice) Path() string                { return d.path }
func (d *fakeDevice) Busy() (string, error)       { return d.busy, d.busyErr }
func (d *fakeDevice) Identity() (Identity, error) { return d.id, d.idErr }

func chain() []SessionInfo {
	return []SessionInfo{
		{ID: "sdb1_1700000000", State: snapstore.StatusComplete, Verified: true, Identity: Identity{Size: 1 << 30, FSUUID: "old-uuid"}},
		{ID: "sdb1_1700000100", State: snapstore.StatusComplete, Verified: true, Identity: Identity{Size: 1 << 30, FSUUID: "new-uuid"}},
	}
}

func TestPreflightOK(t *testing.T) {
	dev := &fakeDevice{path: "/dev/sdb1", id: Identity{Size: 1 << 30, FSUUID: "new-uuid"}}
	warn, err := Preflight(dev, chain(), PreflightOptions{})
	if err != nil || len(warn) != 0 {
		t.Fatalf("warnings %v, error %v", warn, err)
	}
}

func TestPreflightBusy(t *testing.T) {
	dev := &fakeDevice{path: "/dev/sdb1", busy: "mounted on /mnt/data", id: Identity{Size: 1 << 30, FSUUID: "new-uuid"}}
	_, err := Preflight(dev, chain(), PreflightOptions{})
	if !errors.Is(err, ErrDeviceBusy) {
		t.Fatalf("error %v is not ErrDeviceBusy", err)
	}
	var be *BusyError
	if !errors.As(err, &be) || be.Device != "/dev/sdb1" || be.Reason != "mounted on /mnt/data" {
		t.Fatalf("error %#v", err)
	}
	for _, want := range []string{"/dev/sdb1", "mounted on /mnt/data", "unmount"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if errors.Is(err, ErrIdentityMismatch) || errors.Is(err, ErrSessionNotComplete) {
		t.Errorf("error %v claims more than busy", err)
	}

	// A failed probe is an error, but not "busy" (exit 1, not 4).
	dev = &fakeDevice{path: "/dev/sdb1", busyErr: errors.New("permission denied"), id: Identity{Size: 1 << 30}}
	_, err = Preflight(dev, chain(), PreflightOptions{})
	if err == nil || errors.Is(err, ErrDeviceBusy) || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("error %v", err)
	}
}

func TestPreflightIdentity(t *testing.T) {
	cases := []struct {
		name    string
		id      Identity
		mutate  func([]SessionInfo)
		wantErr string // "" means no error
	}{
		{name: "size differs", id: Identity{Size: 2 << 30, FSUUID: "new-uuid"},
			wantErr: "size is 2147483648 bytes, the session recorded 1073741824 bytes"},
		{name: "UUID differs from the newest session", id: Identity{Size: 1 << 30, FSUUID: "other"},
			wantErr: "session sdb1_1700000100: filesystem UUID is other, the session recorded new-uuid"},
		{name: "UUID of an older session only", id: Identity{Size: 1 << 30, FSUUID: "old-uuid"},
			wantErr: "filesystem UUID is old-uuid, the session recorded new-uuid"},
		{name: "device has no filesystem UUID", id: Identity{Size: 1 << 30}},
		{name: "device size unknown", id: Identity{FSUUID: "new-uuid"}},
		{name: "newest session recorded no UUID: the newest that did counts", id: Identity{Size: 1 << 30, FSUUID: "old-uuid"},
			mutate: func(s []SessionInfo) { s[1].Identity.FSUUID = "" }},
		{name: "seed sessions record no identity", id: Identity{Size: 1 << 30, FSUUID: "x"},
			mutate: func(s []SessionInfo) { s[0].Identity, s[1].Identity = Identity{}, Identity{} }},
		{name: "an older session's size differs", id: Identity{Size: 1 << 30, FSUUID: "new-uuid"},
			mutate:  func(s []SessionInfo) { s[0].Identity.Size = 1 << 29 },
			wantErr: "does not match session sdb1_1700000000: size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := chain()
			if tc.mutate != nil {
				tc.mutate(s)
			}
			_, err := Preflight(&fakeDevice{path: "/dev/sdb1", id: tc.id}, s, PreflightOptions{})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("error %v", err)
				}
				return
			}
			var ie *IdentityError
			if !errors.Is(err, ErrIdentityMismatch) || !errors.As(err, &ie) || ie.Device != "/dev/sdb1" {
				t.Fatalf("error %v is not an identity mismatch", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q lacks %q", err, tc.wantErr)
			}
		})
	}
	_, err := Preflight(&fakeDevice{path: "/dev/sdb1", idErr: errors.New("BLKGETSIZE64: no such device")}, chain(), PreflightOptions{})
	if err == nil || !strings.Contains(err.Error(), "probing /dev/sdb1: BLKGETSIZE64") {
		t.Fatalf("error %v", err)
	}
}

func TestPreflightSessionStates(t *testing.T) {
	dev := &fakeDevice{path: "/dev/sdb1", id: Identity{Size: 1 << 30, FSUUID: "new-uuid"}}
	s := chain()
	s[0].State = snapstore.StatusInvalid
	s[1].State = snapstore.StatusIncomplete
	_, err := Preflight(dev, s, PreflightOptions{})
	if !errors.Is(err, ErrSessionNotComplete) {
		t.Fatalf("error %v", err)
	}
	for _, want := range []string{"session sdb1_1700000000 is invalid", "session sdb1_1700000100 is incomplete", "dmsnap sessions list shows which sessions can still be restored to"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	warn, err := Preflight(dev, s, PreflightOptions{AllowIncomplete: true})
	if err != nil || len(warn) != 2 || !strings.Contains(warn[0], "using it anyway") {
		t.Fatalf("allowed: warnings %q, error %v", warn, err)
	}

	// An unknown state is not complete.
	s = chain()
	s[1].State = "open"
	if _, err := Preflight(dev, s, PreflightOptions{}); !errors.Is(err, ErrSessionNotComplete) || !strings.Contains(err.Error(), `state "open"`) {
		t.Fatalf("error %v", err)
	}

	// Seed sessions (no checksums) are restorable, with a warning.
	s = chain()
	s[0].Verified = false
	warn, err = Preflight(dev, s, PreflightOptions{})
	if err != nil || len(warn) != 1 || !strings.Contains(warn[0], "sdb1_1700000000 has no checksums") {
		t.Fatalf("warnings %q, error %v", warn, err)
	}
}

func TestPreflightJoinsEveryReason(t *testing.T) {
	dev := &fakeDevice{path: "/dev/sdb1", busy: "open by another process", id: Identity{Size: 1 << 20}}
	s := chain()
	s[1].State = snapstore.StatusInvalid
	_, err := Preflight(dev, s, PreflightOptions{})
	for _, target := range []error{ErrDeviceBusy, ErrIdentityMismatch, ErrSessionNotComplete} {
		if !errors.Is(err, target) {
			t.Errorf("error %v is not %v", err, target)
		}
	}
}

func TestPreflightRejectsOddChains(t *testing.T) {
	dev := &fakeDevice{path: "/dev/sdb1", id: Identity{Size: 1 << 30}}
	if _, err := Preflight(dev, nil, PreflightOptions{}); !errors.Is(err, ErrNoSessions) {
		t.Errorf("no sessions: %v", err)
	}
	s := chain()
	s[1].ID = s[0].ID
	if _, err := Preflight(dev, s, PreflightOptions{}); err == nil || !strings.Contains(err.Error(), "in the plan twice") {
		t.Errorf("duplicate session: %v", err)
	}
}
