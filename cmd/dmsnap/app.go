package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/config"
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
	// exitNotFound: the store or the state directory named (by a flag,
	// the environment or the configuration file) does not exist.
	exitNotFound = 6
	// exitCheck: status --check found something that needs a person.
	exitCheck = 7
)

// errCheck marks the error of a failed status --check.
var errCheck = errors.New("needs attention")

// exitCodesHelp ends the top-level help and the man page.
const exitCodesHelp = `Settings: --store and --state, else the environment's DMSNAP_STORE and
DMSNAP_STATE, else "store =" and "state =" lines in ` + config.Path + `
(DMSNAP_CONFIG names another file), else /snapshot and /var/lib/dmsnap. A
device that is activated keeps the store it was activated with: commands on
its sessions read that one.

Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong password, 4 device busy or
mounted (or the lock held), 5 cannot verify (an OS error reading a session,
not damage), 6 store or state directory not found, 7 status --check found a
problem.`

// env is what every subcommand gets: its streams and the global settings.
type env struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	store  string // --store: where closed sessions live
	state  string // --state: registry, lock (not the password: passwd.Path)
	// storeSet, stateSet: given by a flag, the environment or the
	// configuration file, not the built-in default (settings).
	storeSet, stateSet bool
	wait               time.Duration // --wait: for the lock
	noWait             bool          // --no-wait
	json               bool          // --json: the envelope (output.go)
	command            string        // the command's path after "dmsnap", for the envelope
	emitted            bool          // the envelope was printed
}

// Annotations a command may carry.
const (
	// annoNoState: the command does not use the state directory, which is
	// then not checked for it.
	annoNoState = "dmsnap/no-state"
	// annoReadsState: the command reports on the state directory's
	// devices (status, deactivate): a missing one that was named is a
	// mistyped path (exit 6), not a host with no device activated.
	annoReadsState = "dmsnap/reads-state"
)

// usageError marks a mistake on the command line (exit code 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// registered holds the constructors of the top-level commands; each cmd_*.go
// file adds its own in init, so that commands live one to a file. They are
// built anew for every run (tests run many), over that run's env.
var registered []func(e *env) *cobra.Command

func register(f func(e *env) *cobra.Command) { registered = append(registered, f) }

// newRoot builds the command tree over e.
func newRoot(e *env) *cobra.Command {
	// The root's hook (the state directory's check) runs before a group's
	// own (sessions: the store's), not instead of it.
	cobra.EnableTraverseRunHooks = true
	root := &cobra.Command{
		Use:   "dmsnap",
		Short: "mount-scoped snapshot sessions for block devices, through device-mapper",
		Long: `dmsnap gives a block device snapshot sessions: once a device is activated,
each mount to unmount of /dev/mapper/dmsnap-NAME is a session, the
pre-image of every block it overwrites is kept in the store, and
dmsnap restore puts the device back, byte for byte, to its state before
any session. See README.md and docs/ for the whole story.

` + exitCodesHelp,
		Version:       versionString(),
		SilenceErrors: true, // run prints them, with the command's name
		SilenceUsage:  true, // a usage error says where the help is instead
		// No arguments: print the help, a usage mistake (exit 2). An unknown
		// command lands here too (Args is set, so cobra does not refuse it
		// itself, with its own error that is no usageError).
		Args: cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				c.SetOut(e.stderr)
				c.Help()
				return usageError{"a command is needed"}
			}
			return unknownCommand(c, args[0])
		},
	}
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetVersionTemplate("dmsnap {{.Version}}\n")
	root.PersistentFlags().StringVar(&e.store, "store", "/snapshot", "the store `DIR`, where the sessions go")
	root.PersistentFlags().StringVar(&e.state, "state", session.DefaultStateDir, "the state `DIR` (registry, lock)")
	root.PersistentFlags().DurationVar(&e.wait, "wait", cliLockWait, "how long to wait (a `DURATION`: 90s, 5m) for the lock another dmsnap command holds")
	root.PersistentFlags().BoolVar(&e.json, "json", false, "print the result as JSON (docs/cli.md: one envelope with a schema version)")
	root.PersistentFlags().BoolVar(&e.noWait, "no-wait", false, "fail at once (exit 4) when another dmsnap command holds the lock")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usagef("%v (see %s --help)", err, c.CommandPath())
	})
	root.PersistentPreRunE = func(c *cobra.Command, args []string) error {
		e.command = strings.TrimPrefix(c.CommandPath(), "dmsnap ")
		if err := e.settings(c); err != nil && needsState(c) {
			return err
		}
		if f := c.Flags().Lookup("wait"); f != nil && f.Changed && (e.noWait || e.wait <= 0) {
			return usagef("--wait takes a positive DURATION, and not with --no-wait")
		}
		// Paths under the state directory are recorded in its files (merge
		// stores, view COWs) and checked to lie in it: absolute from here on.
		if abs, err := filepath.Abs(e.state); err == nil {
			e.state = abs
		}
		if !needsState(c) {
			return nil
		}
		// Checked once, before the command does anything, as the store is:
		// the registry says which devices are stacked and where their
		// sessions go. Its real path is what the command uses.
		var err error
		if e.state, err = trustdir.ResolveStateDir(e.state); err != nil {
			return err
		}
		if e.stateSet && c.Annotations[annoReadsState] != "" {
			return mustExist("state directory", e.state)
		}
		return nil
	}
	for _, f := range registered {
		root.AddCommand(f(e))
	}
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Annotations = map[string]string{annoNoState: "yes"}
		}
	}
	root.SetUsageTemplate(usageTemplate)
	return root
}

// needsState reports whether c uses the state directory: not the help,
// the version, or a completion script (completing reads the registry, but
// only if it can).
func needsState(c *cobra.Command) bool {
	for p := c; p != nil; p = p.Parent() {
		if p.Annotations[annoNoState] != "" {
			return false
		}
		switch p.Name() {
		case "help", cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd:
			return false
		}
	}
	return c.HasParent()
}

// unknownCommand is the usage error for a command name c does not have,
// with cobra's suggestions of what was meant.
func unknownCommand(c *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q", name)
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2 // cobra's default, set only on its own paths
	}
	if s := c.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %s?", strings.Join(s, " or "))
	}
	return usagef("%s (see %s --help)", msg, c.CommandPath())
}

// group makes a command that only holds subcommands: run alone or with an
// unknown subcommand, it is a usage error naming them.
func group(c *cobra.Command) *cobra.Command {
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			var names []string
			for _, s := range c.Commands() {
				if s.IsAvailableCommand() {
					names = append(names, s.Name())
				}
			}
			return usagef("%s needs a subcommand: %s (see %s --help)", c.CommandPath(), strings.Join(names, ", "), c.CommandPath())
		}
		return unknownCommand(c, args[0])
	}
	return c
}

// usageTemplate is cobra's, without a usage line for the commands that
// only hold others (they run only to say so), and with the global flags
// named so.
const usageTemplate = `Usage:{{if and .Runnable (not .HasAvailableSubCommands)}}
  {{.UseLine}}{{end}}{{if .HasAvailableSubCommands}}
  {{.CommandPath}} COMMAND{{end}}{{if .HasAvailableSubCommands}}

Commands:{{range .Commands}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

Global flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} COMMAND --help" for more about a command.{{end}}
`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRoot(e)
	root.SetArgs(args)
	c, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	name := "dmsnap"
	if c != nil {
		name = c.CommandPath()
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	code := exitCode(err)
	if e.command == "" {
		e.command = strings.TrimPrefix(name, "dmsnap ")
	}
	e.emitError(err, code)
	return code
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
	case errors.Is(err, errNotFound):
		return exitNotFound
	case errors.Is(err, errCheck):
		return exitCheck
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

// argsBetween checks a command's positional arguments: between min and max of
// them (max < 0: no limit), else the usage error msg.
func argsBetween(min, max int, msg string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < min || max >= 0 && len(args) > max {
			return usagef("%s (see %s --help)", msg, c.CommandPath())
		}
		return nil
	}
}
