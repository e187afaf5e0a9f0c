package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/passwd"
	"github.com/dmsnap/dmsnap/session"
)

func init() { register(passwdCmd) }

func passwdCmd(e *env) *cobra.Command {
	var (
		pw     passwordFlags
		remove bool
	)
	c := &cobra.Command{
		Use:   "passwd",
		Short: "set or change the control password (activate, deactivate, prune, restore --no-undo)",
		Long: `Sets the control password that activate asks for, and so does every command
that removes protection or restore points: deactivate, sessions prune (not
--dry-run), restore --no-undo, and passwd itself (the old password first).
Only a salted Argon2id hash is stored, in ` + passwd.Path + `, for
the whole host: --state does not move it. With --password-stdin or
--password-file, the first line is the old password (when one is set) and
the next line the new one.

A password file that cannot be trusted (a symbolic link, damaged, writable by
others, ...) refuses every command that needs the password, this one included:
root removes it by hand (rm ` + passwd.Path + `) and sets a new password.

Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong (old) password.`,
		Args: argsBetween(0, 0, "passwd takes no arguments"),
		RunE: func(c *cobra.Command, args []string) error { return runPasswd(e, pw, remove) },
	}
	pw.add(c.Flags())
	c.Flags().BoolVar(&remove, "clear", false, "remove the control password (the old one is asked)")
	return c
}

func runPasswd(e *env, pw passwordFlags, remove bool) error {
	if err := pw.check(); err != nil {
		return err
	}
	sec := newSecret()
	set, err := sec.IsSet()
	if err != nil {
		return err
	}
	in := pw.input(e)
	if pw.stdin || pw.file != "" {
		// Read both lines at once: a second read of a stream would lose
		// what the first one buffered.
		lr, err := newLineSource(e, &pw)
		if err != nil {
			return err
		}
		in = passwd.Input{Stdin: true, StdinReader: lr}
	}
	if set {
		if err := sec.Require(e.ctx, func() ([]byte, error) { return in.Read("current control password: ") }); err != nil {
			return fmt.Errorf("control password: %w", err)
		}
	} else if remove {
		return e.emit(map[string]string{"password": "none"}, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, "no control password is set")
			return err
		})
	}
	if remove {
		if err := sec.Clear(); err != nil {
			return err
		}
		return e.emit(map[string]string{"password": "removed"}, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, "control password removed: no command asks for one any more")
			return err
		})
	}
	p, err := in.ReadNew("new control password: ")
	if errors.Is(err, passwd.ErrNoPassword) {
		return fmt.Errorf("new control password: %w (give it on the next line or at the prompt)", err)
	}
	if err != nil {
		return fmt.Errorf("new control password: %w", err)
	}
	if err := sec.Set(p); err != nil {
		return fmt.Errorf("store the control password in %s: %w", sec.Path, err)
	}
	session.Crashpoint(session.CrashpointPasswd)
	return e.emit(map[string]string{"password": "set"}, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, "control password set")
		return err
	})
}

// lineSource hands out one line per Read, so that each passwd.Input.Read
// (which buffers what it reads) takes exactly one line of the input.
type lineSource struct{ lines [][]byte }

func (l *lineSource) Read(p []byte) (int, error) {
	if len(l.lines) == 0 {
		return 0, io.EOF
	}
	n := copy(p, l.lines[0])
	l.lines[0] = l.lines[0][n:]
	if len(l.lines[0]) == 0 {
		l.lines = l.lines[1:]
	}
	return n, nil
}

// newLineSource reads the old and new passwords given with
// --password-stdin or --password-file.
func newLineSource(e *env, p *passwordFlags) (*lineSource, error) {
	var r io.Reader = e.stdin
	what := "standard input"
	if p.file != "" {
		f, err := os.Open(p.file)
		if err != nil {
			return nil, fmt.Errorf("password file: %w", err)
		}
		defer f.Close()
		r, what = f, p.file
	}
	b, err := io.ReadAll(io.LimitReader(r, 3*4100))
	if err != nil {
		return nil, fmt.Errorf("read passwords from %s: %w", what, err)
	}
	var ls lineSource
	for line := range bytes.Lines(b) {
		ls.lines = append(ls.lines, line)
	}
	return &ls, nil
}
