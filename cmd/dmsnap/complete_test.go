//go:build !vm

// Host tests only: the guest has no bash, bash-completion or man.

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Completion offers the store's session IDs (and latest) for restore
// --session, straight from the command tree (cobra's __complete, what every
// shell's script calls).
func TestCompleteSessionIDs(t *testing.T) {
	fx := newRestoreFixture(t, []int{1}, []int{2})
	code, out, errOut := runCLI(t, "__complete", "--store", fx.store, "--state", fx.state, "restore", "--session", "")
	if code != exitOK {
		t.Fatalf("__complete: exit %d, %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var words []string
	for _, l := range lines[:len(lines)-1] {
		words = append(words, strings.SplitN(l, "\t", 2)[0])
	}
	if want := append([]string{"latest"}, fx.ids...); !slices.Equal(words, want) {
		t.Errorf("completions %q, want %q (output %q)", words, want, out)
	}
	if d := lines[len(lines)-1]; d != ":4" {
		t.Errorf("directive %q, want :4 (no file completion)", d)
	}
	// A prefix narrows them.
	_, out, _ = runCLI(t, "__complete", "--store", fx.store, "sessions", "show", fx.ids[1][:len(fx.ids[1])-1])
	if !strings.HasPrefix(out, fx.ids[1]+"\t") || strings.Contains(out, fx.ids[0]) {
		t.Errorf("sessions show %s<TAB>: %q", fx.ids[1][:len(fx.ids[1])-1], out)
	}
}

// buildDmsnap builds the release binary into a temporary directory.
func buildDmsnap(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dmsnap")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// `dmsnap completion bash`, sourced by a real bash, completes a session ID
// at `dmsnap --store S restore --session <TAB>`.
func TestBashCompletesSessionID(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash is needed for this test: %v", err)
	}
	bin := buildDmsnap(t)
	fx := newRestoreFixture(t, []int{1}, []int{2})
	const lib = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(lib); err != nil {
		t.Fatalf("bash-completion is needed for this test (hack/host-deps.sh installs it): %v", err)
	}
	script := `source ` + lib + `
source <(dmsnap completion bash)
compopt() { :; } # works only inside a completion the shell started
COMP_WORDS=(dmsnap --store "$STORE" --state "$STATE" restore --session "$PREFIX")
COMP_CWORD=7
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
__start_dmsnap
printf '%s\n' "${COMPREPLY[@]}"
`
	cmd := exec.Command(bash, "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"),
		"STORE="+fx.store, "STATE="+fx.state, "PREFIX="+fx.ids[0][:len(fx.ids[0])-1])
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	got := strings.Fields(string(out))
	if !slices.Equal(got, []string{fx.ids[0]}) {
		t.Errorf("bash completed %q, want only %q", got, fx.ids[0])
	}
}

// The man pages generated from the command tree render with man(1), with
// no warning, and say what --help says.
func TestManPagesRender(t *testing.T) {
	man, err := exec.LookPath("man")
	if err != nil {
		t.Fatalf("man (man-db) is needed for this test: %v", err)
	}
	root := newRoot(&env{})
	files, err := docFiles(root, "/usr")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var page string
	for _, f := range files {
		p := filepath.Join(dir, f.path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, f.text, 0o644); err != nil {
			t.Fatal(err)
		}
		if filepath.Base(p) == "dmsnap-restore.8" {
			page = p
		}
	}
	if page == "" {
		t.Fatalf("no dmsnap-restore.8 among %d files", len(files))
	}
	cmd := exec.Command(man, "--warnings", "-l", page)
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=80", "LANG=C.UTF-8")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("man -l %s: %v\n%s", page, err, stderr.String())
	}
	for _, want := range []string{"DMSNAP-RESTORE(8)", "dmsnap restore [NAME|DEVICE|FILE]", "--session", "--no-undo", "OPTIONS INHERITED FROM PARENT COMMANDS", "--store"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("man dmsnap-restore does not say %q:\n%s", want, out)
		}
	}
}
