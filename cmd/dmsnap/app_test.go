package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

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
	if code != exitOK || !strings.Contains(out, "version") || !strings.Contains(out, "Exit codes") {
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

// allCommands returns every command of the tree under the root, by path
// ("sessions prune"), hidden ones included, cobra's own left out.
func allCommands() []string {
	var out []string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		for _, s := range c.Commands() {
			switch s.Name() {
			case "help", "completion":
				continue
			}
			p := append(slices.Clone(path), s.Name())
			out = append(out, strings.Join(p, " "))
			walk(s, p)
		}
	}
	walk(newRoot(&env{}), nil)
	return out
}

// Every command's --help prints its own usage line and flags, the same as
// `dmsnap help CMD`, and bool flags without pflag's "[=true|false]" (they
// take no value). Each is compared with its golden copy in
// testdata/help (go test -run TestEveryHelp -update writes them).
func TestEveryHelp(t *testing.T) {
	cmds := allCommands()
	if len(cmds) < 15 {
		t.Fatalf("only %d commands found: %q", len(cmds), cmds)
	}
	for _, name := range append(cmds, "") {
		args := append(strings.Fields(name), "--help")
		code, out, errOut := runCLI(t, args...)
		if code != exitOK || errOut != "" {
			t.Errorf("dmsnap %s --help: exit %d, stderr %q", name, code, errOut)
		}
		if !strings.Contains(out, "Usage:\n  "+strings.TrimSpace("dmsnap "+name)) {
			t.Errorf("dmsnap %s --help: no usage line of its own:\n%s", name, out)
		}
		if strings.Contains(out, "[=true|false]") {
			t.Errorf("dmsnap %s --help shows [=true|false]:\n%s", name, out)
		}
		if _, viaHelp, _ := runCLI(t, append([]string{"help"}, strings.Fields(name)...)...); viaHelp != out {
			t.Errorf("dmsnap help %s differs from dmsnap %s --help:\n%s\n----\n%s", name, name, viaHelp, out)
		}
		golden(t, filepath.Join("testdata", "help", strings.ReplaceAll(cmp.Or(name, "dmsnap"), " ", "-")+".txt"), out)
	}
}

var update = flag.Bool("update", false, "write the golden files of the tests instead of comparing with them")

// golden compares got with the file at path (writes it with -update).
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs from its golden copy (go test -run %s -update rewrites it after a wanted change):\n--- got\n%s\n--- want\n%s", path, t.Name(), got, want)
	}
}

// The command line as users of other tools expect it (issue 19): global
// flags anywhere, help per command, suggestions, --version, and errors that
// name the command once.
func TestCommandLineConventions(t *testing.T) {
	store, state := t.TempDir(), t.TempDir()
	// Global flags after the command and its subcommand.
	if code, out, errOut := runCLI(t, "sessions", "list", "--store", store, "--state", state); code != exitOK || !strings.Contains(out, "no sessions in "+store) {
		t.Errorf("sessions list --store after the command: exit %d, %q %q", code, out, errOut)
	}
	// sessions alone names every subcommand.
	code, _, errOut := runCLI(t, "--state", state, "--store", store, "sessions")
	for _, sub := range []string{"list", "show", "verify", "prune", "open", "mount", "close"} {
		if code != exitUsage || !strings.Contains(errOut, sub) {
			t.Errorf("dmsnap sessions: exit %d, %q does not name %s", code, errOut, sub)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"sessions", "bogus"}, "dmsnap sessions: unknown command \"bogus\""},
		{[]string{"restor"}, "did you mean restore?"},
		{[]string{"sessions", "lst"}, "did you mean list?"},
		{[]string{"restore", "--bogus"}, "dmsnap restore: unknown flag: --bogus (see dmsnap restore --help)"},
		{[]string{"status", "a", "b"}, "status takes at most one NAME"},
	} {
		code, _, errOut := runCLI(t, append([]string{"--state", state, "--store", store}, c.args...)...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("dmsnap %q: exit %d, %q; want exit %d and %q", c.args, code, errOut, exitUsage, c.want)
		}
		if strings.Contains(errOut, "sessions: sessions") {
			t.Errorf("dmsnap %q names the command twice: %q", c.args, errOut)
		}
	}
	code, out, _ := runCLI(t, "--version")
	if _, want, _ := runCLI(t, "version"); code != exitOK || out != want || !strings.HasPrefix(out, "dmsnap ") {
		t.Errorf("dmsnap --version: exit %d, %q; dmsnap version says %q", code, out, want)
	}
}

// TestViewName: views.json is checked against session.ViewDMName, which
// spells dm.Prefix out; both must name the same device.
func TestViewName(t *testing.T) {
	if got, want := session.ViewDMName("sdb1", "sdb1_1700000000"), dm.Prefix+"sdb1-at1700000000"; got != want {
		t.Fatalf("viewName = %s, want %s", got, want)
	}
}
