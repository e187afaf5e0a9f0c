package hostfiles

import (
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/devnum"
)

func TestStoreUdevRules(t *testing.T) {
	stores := []Device{
		{Name: "/snapshot", Path: "/dev/sdb1", Dev: devnum.Dev{Major: 8, Minor: 17},
			Stable: &devid.ID{Kind: devid.KindPartition, PartUUID: "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}},
		{Name: "/srv/snap", Path: "/dev/vdc", Dev: devnum.Dev{Major: 252, Minor: 32}},
	}
	rule, err := StoreUdevRules("/var/lib/dmsnap/stores.json", stores, defaults)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`ENV{DM_NAME}=="dmsnap*", GOTO="dmsnap_store_end"`,
		"# the store on /snapshot (/dev/sdb1)\n" + `ENV{ID_PART_ENTRY_UUID}=="0fc63daf-8483-4772-8e79-3d69d8477de4", GOTO="dmsnap_store_up"` + "\n" + `ENV{MAJOR}=="8", ENV{MINOR}=="17", GOTO="dmsnap_store_up"`,
		"# the store on /srv/snap (/dev/vdc)\n" + `ENV{MAJOR}=="252", ENV{MINOR}=="32", GOTO="dmsnap_store_up"`,
		`ENV{SYSTEMD_WANTS}+="dmsnap-store@.service"`,
		`RUN+="/usr/local/sbin/dmsnap --state /var/lib/dmsnap store up $devnode"`,
	} {
		if !strings.Contains(rule, want) {
			t.Errorf("rule lacks %q:\n%s", want, rule)
		}
	}
	empty, err := StoreUdevRules("/var/lib/dmsnap/stores.json", nil, defaults)
	if err != nil || strings.Contains(empty, "RUN") || strings.Contains(empty, "SYSTEMD_WANTS") {
		t.Fatalf("a rule without stores runs something: %v\n%s", err, empty)
	}
	if _, err := StoreUdevRules("x", stores, Options{StateDir: "relative", Store: "/s"}); err == nil {
		t.Fatal("a relative state directory was accepted")
	}
}

func TestStoreUnit(t *testing.T) {
	u, err := StoreUnit(defaults)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"BindsTo=%i.device", "Before=dmsnap-watch.service shutdown.target",
		"ExecStart=/usr/local/sbin/dmsnap --state /var/lib/dmsnap store up %f", "RequiresMountsFor=/var/lib/dmsnap\n", "NoNewPrivileges=yes"} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
}

func TestVerifyUnits(t *testing.T) {
	svc, err := VerifyService(defaults)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=oneshot", "ExecStart=/usr/local/sbin/dmsnap --state /var/lib/dmsnap --store /snapshot sessions verify\n",
		"IOSchedulingClass=idle", "RequiresMountsFor=/var/lib/dmsnap /snapshot"} {
		if !strings.Contains(svc, want) {
			t.Errorf("service lacks %q:\n%s", want, svc)
		}
	}
	if tm := VerifyTimer(); !strings.Contains(tm, "OnCalendar=weekly") || !strings.Contains(tm, "Persistent=true") || !strings.Contains(tm, "WantedBy=timers.target") {
		t.Errorf("timer:\n%s", tm)
	}
}
