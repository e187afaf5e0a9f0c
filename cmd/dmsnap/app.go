package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/passwd"
	"github.com/dmsnap/dmsnap/internal/trustdir"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Exit codes, as documented in the README and each command's help.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitBadPassword = 3
	exitBusy        = 4
	// exitCannotVerify: a session's file could not be read for a reason of
	// the OS (permission, too many open files, an I/O error), so it could
	// not be checked; that is not damage (exit 1).
	exitCannotVerify = 5
)

// env is what every subcommand gets: its streams and the global settings.
type env struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	store  string // --store: where closed sessions live
	state  string // --state: registry, lock (not the password: passwd.Path)
}

// command is one subcommand. run gets the arguments after the subcommand's
// name, with the global flags already removed.
type command struct {
	name    string
	summary string
	hidden  bool
	noState bool // does not use the state directory: not checked for it
	run     func(e *env, args []string) error
}

// usageError marks a mistake on the command line (exit code 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// registered holds the subcommands; each cmd_*.go file adds its own in init,
// so that subcommands live one to a file.
var registered []command

func register(c command) { registered = append(registered, c) }

func commands() []command { return registered }

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	global := pflag.NewFlagSet("dmsnap", pflag.ContinueOnError)
	global.SetInterspersed(false)
	global.SetOutput(io.Discard)
	global.StringVar(&e.store, "store", "/snapshot", "directory of the session store")
	global.StringVar(&e.state, "state", "/var/lib/dmsnap", "directory of dmsnap's state (registry, lock)")
	help := global.BoolP("help", "h", false, "show help")
	if err := global.Parse(args); err != nil {
		fmt.Fprintf(stderr, "dmsnap: %v\n", err)
		printUsage(stderr, global)
		return exitUsage
	}
	// Paths under the state directory are recorded in its files (merge
	// stores, view COWs) and checked to lie in it: absolute from here on.
	if abs, err := filepath.Abs(e.state); err == nil {
		e.state = abs
	}
	rest := global.Args()
	if *help || len(rest) == 0 || rest[0] == "help" {
		printUsage(stdout, global)
		if len(rest) == 0 && !*help {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name != rest[0] {
			continue
		}
		if !c.noState {
			// Checked once, before the command does anything, as the store
			// is: the registry says which devices are stacked and where
			// their sessions go. Its real path is what the command uses.
			var err error
			if e.state, err = trustdir.ResolveStateDir(e.state); err != nil {
				fmt.Fprintf(stderr, "dmsnap %s: %v\n", c.name, err)
				return exitCode(err)
			}
		}
		err := c.run(e, rest[1:])
		if err == nil {
			return exitOK
		}
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "dmsnap %s: %v\n", c.name, err)
		return exitCode(err)
	}
	fmt.Fprintf(stderr, "dmsnap: unknown command %q (see dmsnap help)\n", rest[0])
	return exitUsage
}

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var u usageError
	switch {
	case errors.As(err, &u):
		return exitUsage
	case errors.Is(err, passwd.ErrWrongPassword):
		return exitBadPassword
	case errors.Is(err, session.ErrBusy), errors.Is(err, dm.ErrBusy),
		errors.Is(err, restore.ErrDeviceBusy), errors.Is(err, session.ErrLocked):
		return exitBusy
	case errors.Is(err, snapstore.ErrCannotVerify) && !wrote(err):
		return exitCannotVerify
	}
	return exitFailure
}

// wrote reports a restore that failed after it had begun writing: whatever
// stopped it, the target is half restored, and that is a failure.
func wrote(err error) bool {
	var pw *restore.PartialWriteError
	var ie *restore.IncompleteImageError
	return errors.As(err, &pw) && pw.Written > 0 || errors.As(err, &ie)
}

func printUsage(w io.Writer, global *pflag.FlagSet) {
	fmt.Fprintln(w, "usage: dmsnap [--store DIR] [--state DIR] COMMAND [ARGS]")
	fmt.Fprintln(w, "\ncommands:")
	cmds := commands()
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	for _, c := range cmds {
		if !c.hidden {
			fmt.Fprintf(w, "  %-20s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintln(w, "\nglobal flags:")
	global.SetOutput(w)
	fmt.Fprint(w, strings.TrimRight(flagUsages(global), "\n")+"\n")
	fmt.Fprintln(w, "\nexit codes: 0 ok, 1 failure, 2 usage, 3 wrong password, 4 device busy or mounted,")
	fmt.Fprintln(w, "5 cannot verify (an OS error reading a session, not damage)")
}

// flagUsages is fs.FlagUsages without the "[=true|false]" pflag shows after
// a bool flag: it takes no value on the command line. The columns stay
// aligned.
func flagUsages(fs *pflag.FlagSet) string {
	return strings.ReplaceAll(fs.FlagUsages(), "[=true|false]", strings.Repeat(" ", len("[=true|false]")))
}

// newFlags makes a subcommand's flag set that reports errors instead of exiting.
func newFlags(e *env, name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("dmsnap "+name, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	// A command with its own help text replaces this one.
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: dmsnap %s", name)
		if fs.HasFlags() {
			fmt.Fprint(e.stderr, " [flags]")
		}
		for _, c := range commands() {
			if c.name == name {
				fmt.Fprintf(e.stderr, "\n\n%s\n", c.summary)
			}
		}
		if fs.HasFlags() {
			fmt.Fprint(e.stderr, "\nflags:\n", flagUsages(fs))
		}
	}
	return fs
}

// parseFlags parses a subcommand's flags and turns their errors into usage errors.
func parseFlags(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	return nil
}
