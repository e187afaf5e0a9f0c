package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/passwd"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
)

// runCLI runs the command line in-process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, "version")
	if code != exitOK || !strings.HasPrefix(out, "dmsnap ") {
		t.Fatalf("version: code %d, output %q", code, out)
	}
	if strings.Contains(out, "crash points") != session.CrashpointsBuilt {
		t.Fatalf("version %q: a build with crash points %v must say so, and only it", out, session.CrashpointsBuilt)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"nosuchcommand"}, {"--bogus", "version"}, {"version", "extra"}} {
		code, _, _ := runCLI(t, args...)
		if code != exitUsage {
			t.Errorf("dmsnap %q: exit code %d, want %d", args, code, exitUsage)
		}
	}
}

func TestHelpListsCommands(t *testing.T) {
	code, out, _ := runCLI(t, "help")
	if code != exitOK || !strings.Contains(out, "version") || !strings.Contains(out, "exit codes") {
		t.Fatalf("help: code %d, output %q", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		err  error
		want int
	}{
		{usagef("bad"), exitUsage},
		{fmt.Errorf("activate: %w", passwd.ErrWrongPassword), exitBadPassword},
		{fmt.Errorf("activate: %w", dm.ErrBusy), exitBusy},
		{fmt.Errorf("restore: %w", restore.ErrDeviceBusy), exitBusy},
		{fmt.Errorf("lock: %w", session.ErrLocked), exitBusy},
		{errors.New("other"), exitFailure},
	}
	for _, c := range cases {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// The host's control password lies in the default state directory, whatever
// --state says: package passwd spells the path out, since it does not import
// session.
func TestPasswordInDefaultStateDir(t *testing.T) {
	if want := session.DefaultStateDir + "/" + passwd.File; passwd.Path != want {
		t.Fatalf("passwd.Path = %q, want %q", passwd.Path, want)
	}
}

// Every command's --help prints its usage, and bool flags without pflag's
// "[=true|false]" (they take no value).
func TestEveryHelp(t *testing.T) {
	for _, c := range commands() {
		args := append(strings.Fields(c.name), "--help")
		_, out, errOut := runCLI(t, args...)
		help := out + errOut
		if !strings.Contains(help, "usage: dmsnap") {
			t.Errorf("dmsnap %s --help: no usage line: %q", c.name, help)
		}
		if strings.Contains(help, "[=true|false]") {
			t.Errorf("dmsnap %s --help shows [=true|false]:\n%s", c.name, help)
		}
	}
}

// TestViewName: views.json is checked against session.ViewDMName, which
// spells dm.Prefix out; both must name the same device.
func TestViewName(t *testing.T) {
	if got, want := session.ViewDMName("sdb1", "sdb1_1700000000"), dm.Prefix+"sdb1-at1700000000"; got != want {
		t.Fatalf("viewName = %s, want %s", got, want)
	}
}
