package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/internal/passwd"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
	"github.com/dmsnap/dmsnap/snapstore"
)

// cliLockWait is how long a command waits for the state lock. The watcher
// converts a closed session while it holds the lock; conversion copies no
// data but reads every pre-image once for its checksums, so a session with
// gigabytes of changes holds the lock for a while, and the default wait
// (session.DefaultLockWait, 10 s) made commands fail behind it. Commands
// therefore wait up to two minutes (--wait changes it) — a conversion of ten or so GiB on a
// slow disk — and then fail with exit 4 naming the holder's PID. Two
// minutes also stays under udev's 180 s event timeout, which would kill a
// waiting `dmsnap attach`. (The alternative, converting outside the lock,
// needs a per-session claim so that two reconciles never convert one
// directory at once; the longer wait is the smaller, safer change.)
const cliLockWait = 2 * time.Minute

// newManager builds the Manager the session commands use. Tests replace it
// with one over session/sessiontest's fakes.
var newManager = systemManager

// systemManager is the Manager of the running system: device-mapper, loop
// devices, snapstore, with the udev rule and the units' drop-ins kept in
// step when udev and systemd are there.
func systemManager(e *env) *session.Manager {
	m := system.NewManager(e.state, e.store)
	// A conversion reads every pre-image once: a large one shows its
	// progress (a line in the watcher's log).
	m.Store = system.Store{Options: snapstore.ConvertOptions{Progress: newProgress(e.stderr, e.json)}}
	setLockWait(e, m)
	m.Log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m.UdevRule = udevRulePath()
	m.UnitDir = unitDir()
	m.Gen = genOptions(e)
	return m
}

// setLockWait sets m's wait for the lock from --wait and --no-wait, and
// has it say on stderr who it waits for: a silent wait looks like a hang.
func setLockWait(e *env, m *session.Manager) {
	m.LockWait = lockWait(e)
	m.LockNotice = func(path string, h session.Holder, wait time.Duration) {
		fmt.Fprintf(e.stderr, "dmsnap: the lock on %s is held by %s: waiting up to %s for it (--wait DURATION, --no-wait)\n", path, h, wait)
	}
}

// lockWait is the wait for a lock that --wait and --no-wait ask for.
func lockWait(e *env) time.Duration {
	switch {
	case e.noWait:
		return session.NoLockWait
	case e.wait == 0:
		return cliLockWait
	}
	return e.wait
}

// udevRulePath is where the udev rule is kept: hostfiles.UdevRulePath when
// the system has udev's configuration directory, else nowhere (a system
// without udev, such as the test VM, gets no rule and no error).
func udevRulePath() string {
	if st, err := os.Stat("/etc/udev"); err == nil && st.IsDir() {
		return hostfiles.UdevRulePath
	}
	return ""
}

// unitDir is where the units' drop-ins are kept: hostfiles.SystemdDir
// when the system has it, else nowhere.
func unitDir() string {
	if st, err := os.Stat(hostfiles.SystemdDir); err == nil && st.IsDir() {
		return hostfiles.SystemdDir
	}
	return ""
}

// genOptions are the paths the generated udev rule and systemd unit run
// dmsnap with: this executable and the global flags in effect.
func genOptions(e *env) hostfiles.Options {
	bin, err := os.Executable()
	if err != nil || strings.HasPrefix(bin, os.TempDir()) {
		bin = ""
	}
	return hostfiles.Options{Binary: bin, StateDir: e.state, Store: e.store}
}

// passwordFlags are the ways a command can be given the control secret.
// There is deliberately no flag taking the password itself.
type passwordFlags struct {
	stdin bool
	file  string
}

func (p *passwordFlags) add(fs *pflag.FlagSet) {
	fs.BoolVar(&p.stdin, "password-stdin", false, "read the control password from the first line of standard input")
	fs.StringVar(&p.file, "password-file", "", "read the control password from the first line of `FILE`")
}

func (p *passwordFlags) check() error {
	if p.stdin && p.file != "" {
		return usagef("give --password-stdin or --password-file, not both")
	}
	return nil
}

func (p *passwordFlags) input(e *env) passwd.Input {
	return passwd.Input{Stdin: p.stdin, StdinReader: e.stdin, File: p.file}
}

// newSecret returns the control secret of the host (passwd.Path,
// whatever --state says); tests put it in a temporary directory and shorten
// its refusal delay.
var newSecret = passwd.New

// requireSecret asks for the control secret when one is set and checks it.
// A wrong password returns (after the refusal delay) an error wrapping
// passwd.ErrWrongPassword: exit code 3, and nothing has been changed.
func requireSecret(e *env, p *passwordFlags) error {
	in := p.input(e)
	err := newSecret().Require(e.ctx, func() ([]byte, error) { return in.Read("dmsnap control password: ") })
	switch {
	case err == nil:
		return nil
	case errors.Is(err, passwd.ErrWrongPassword):
		return fmt.Errorf("control password: %w; nothing was changed", err)
	case errors.Is(err, passwd.ErrNoPassword):
		return fmt.Errorf("control password: %w; a control password is set (dmsnap passwd): type it at the prompt or give it with --password-stdin or --password-file", err)
	case errors.Is(err, passwd.ErrPasswordFile):
		return err // names the file and what to do
	}
	return fmt.Errorf("control password: %w", err)
}
