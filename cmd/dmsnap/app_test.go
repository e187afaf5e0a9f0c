package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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

// decodeResult decodes --json output: the envelope, whose result goes
// into v. Anything else (another schema, an error envelope) is an error.
func decodeResult(out string, v any) error {
	var env struct {
		Schema  int             `json:"schema"`
		Command string          `json:"command"`
		Result  json.RawMessage `json:"result"`
		Error   *jsonError      `json:"error"`
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return fmt.Errorf("not a JSON envelope: %w", err)
	}
	if dec.More() {
		return errors.New("more than one JSON document")
	}
	switch {
	case env.Schema != jsonSchema:
		return fmt.Errorf("schema %d, want %d", env.Schema, jsonSchema)
	case env.Error != nil:
		return fmt.Errorf("error envelope: %+v", *env.Error)
	case env.Command == "" || len(env.Result) == 0:
		return fmt.Errorf("envelope without command or result: %s", out)
	}
	return json.Unmarshal(env.Result, v)
}

// --json on every command that prints gives one envelope on stdout: the
// result, or the error with its exit code.
func TestJSONEnvelope(t *testing.T) {
	fx := newRestoreFixture(t, []int{1}, []int{2})
	g := []string{"--store", fx.store, "--state", fx.state, "--json"}
	for _, c := range []struct {
		args    []string
		command string
		check   func(result json.RawMessage) bool
	}{
		{[]string{"version"}, "version", func(r json.RawMessage) bool { return strings.Contains(string(r), `"version"`) }},
		{[]string{"sessions", "list"}, "sessions list", func(r json.RawMessage) bool { return strings.Count(string(r), `"id"`) == 2 }},
		{[]string{"sessions", "show", "latest"}, "sessions show", func(r json.RawMessage) bool { return strings.Contains(string(r), fx.ids[1]) }},
		{[]string{"sessions", "verify"}, "sessions verify", func(r json.RawMessage) bool { return strings.Count(string(r), `"outcome": "ok"`) == 2 }},
		{[]string{"sessions", "prune", "dev.img", "--keep", "1", "--dry-run"}, "sessions prune", func(r json.RawMessage) bool {
			return strings.Contains(string(r), `"removed": [`) && strings.Contains(string(r), fx.ids[0]) && strings.Contains(string(r), `"dry_run": true`)
		}},
		{[]string{"restore", fx.dev, "--session", fx.ids[0], "--dry-run"}, "restore", func(r json.RawMessage) bool { return strings.Contains(string(r), `"dry_run": true`) }},
	} {
		code, out, errOut := runCLI(t, append(g, c.args...)...)
		var raw json.RawMessage
		if err := decodeResult(out, &raw); err != nil || code != exitOK {
			t.Errorf("dmsnap %q --json: exit %d, %v\n%s%s", c.args, code, err, out, errOut)
			continue
		}
		var env envelope
		json.Unmarshal([]byte(out), &env)
		if env.Command != c.command || !c.check(raw) {
			t.Errorf("dmsnap %q --json: command %q (want %q), result %s", c.args, env.Command, c.command, raw)
		}
	}
	// A failure: the error and its exit code, in the envelope too.
	code, out, _ := runCLI(t, append(g, "sessions", "show", "nosuch_1")...)
	var env envelope
	if err := json.Unmarshal([]byte(out), &env); err != nil || env.Error == nil || env.Error.ExitCode != code || code != exitFailure || env.Result != nil {
		t.Errorf("a failed command's envelope: exit %d, %v, %s", code, err, out)
	}
	code, out, _ = runCLI(t, append(g, "sessions", "list", "--bogus")...)
	if err := json.Unmarshal([]byte(out), &env); err != nil || env.Error == nil || env.Error.ExitCode != exitUsage || code != exitUsage {
		t.Errorf("a usage error's envelope: exit %d, %v, %s", code, err, out)
	}
}

// sessions list -o picks the fields, --no-headings drops the heading, as
// lvs does; times in text are local with their zone.
func TestSessionsListFields(t *testing.T) {
	fx := newRestoreFixture(t, []int{1}, []int{2})
	g := []string{"--store", fx.store, "--state", fx.state}
	code, out, errOut := runCLI(t, append(g, "sessions", "list", "-o", "id,state,size", "--no-headings")...)
	want := fx.ids[0] + "  closed  4096\n" + fx.ids[1] + "  closed  4096\n"
	if code != exitOK || out != want {
		t.Errorf("sessions list -o id,state,size --no-headings: exit %d\n%q\nwant\n%q\n%s", code, out, want, errOut)
	}
	if code, _, errOut := runCLI(t, append(g, "sessions", "list", "-o", "id,bogus")...); code != exitUsage || !strings.Contains(errOut, `unknown field "bogus"`) {
		t.Errorf("-o id,bogus: exit %d, %q", code, errOut)
	}
	store := t.TempDir()
	closedSession(t, store, "sdb1", time.Unix(1700000000, 0))
	_, out, _ = runCLI(t, "--store", store, "--state", fx.state, "sessions", "list", "-o", "id,mounted")
	zone := time.Unix(1700000000, 0).Local().Format("MST")
	if !strings.HasPrefix(out, "ID") || !strings.Contains(out, " "+localTime(time.Unix(1700000000, 0))+"\n") || !strings.HasSuffix(out, " "+zone+"\n") {
		t.Errorf("sessions list -o id,mounted: want a heading and times with their zone (%s):\n%s", zone, out)
	}
}
