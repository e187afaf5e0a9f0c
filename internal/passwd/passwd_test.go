package passwd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fastArgon2 keeps the tests quick; production uses DefaultArgon2.
var fastArgon2 = Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1, SaltLen: 16, KeyLen: 32}

func testSecret(t *testing.T) *Secret {
	s := &Secret{Path: filepath.Join(t.TempDir(), "state", File)}
	s.Params = fastArgon2
	s.RefusalDelay = -1
	return s
}

func TestSecretSetVerify(t *testing.T) {
	ctx := context.Background()
	s := testSecret(t)
	if set, err := s.IsSet(); set || err != nil {
		t.Fatalf("IsSet on a fresh state dir: %v %v", set, err)
	}
	if err := s.Verify(ctx, []byte("anything")); err != nil {
		t.Fatalf("with no secret every password passes: %v", err)
	}
	if err := s.Set([]byte("correct horse")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("passwd file mode %v, %v; want 0600", fi.Mode(), err)
	}
	b, _ := os.ReadFile(s.Path)
	if bytes.Contains(b, []byte("correct horse")) || !bytes.HasPrefix(b, []byte("$argon2id$v=19$m=64,t=1,p=1$")) {
		t.Fatalf("passwd file %q", b)
	}
	if err := s.Verify(ctx, []byte("correct horse")); err != nil {
		t.Fatalf("right password: %v", err)
	}
	for _, wrong := range []string{"correct hors", "correct horse ", "", "Correct horse"} {
		if err := s.Verify(ctx, []byte(wrong)); !errors.Is(err, ErrWrongPassword) {
			t.Fatalf("%q: %v, want ErrWrongPassword", wrong, err)
		}
	}
	// A new salt each time: the same password hashes differently.
	if err := s.Set([]byte("correct horse")); err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(s.Path)
	if bytes.Equal(b, b2) {
		t.Fatal("two Sets wrote the same hash")
	}
	if err := s.Set(nil); !errors.Is(err, ErrNoPassword) {
		t.Fatalf("empty password: %v", err)
	}
	if err := s.Clear(); err != nil {
		t.Fatal(err)
	}
	if set, _ := s.IsSet(); set {
		t.Fatal("still set after Clear")
	}
}

func TestSecretRefusalDelay(t *testing.T) {
	ctx := context.Background()
	s := testSecret(t)
	s.RefusalDelay = 150 * time.Millisecond
	if err := s.Set([]byte("pw")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Verify(ctx, []byte("pw")); err != nil || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("right password: %v after %v (no delay expected)", err, time.Since(start))
	}
	start = time.Now()
	if err := s.Verify(ctx, []byte("no")); !errors.Is(err, ErrWrongPassword) || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("wrong password: %v after %v, want the 150ms delay", err, time.Since(start))
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	s.RefusalDelay = time.Hour
	start = time.Now()
	if err := s.Verify(cctx, []byte("no")); !errors.Is(err, ErrWrongPassword) || time.Since(start) > time.Second {
		t.Fatalf("cancelled delay: %v after %v", err, time.Since(start))
	}
}

func TestSecretDamagedFile(t *testing.T) {
	s := testSecret(t)
	os.MkdirAll(filepath.Dir(s.Path), 0o755)
	for _, text := range []string{
		"", "plain", "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1,x=2$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1$!!$aGFzaGhhc2hoYXNoaGFzaA",
	} {
		os.WriteFile(s.Path, []byte(text), 0o600)
		err := s.Verify(context.Background(), []byte("x"))
		if !errors.Is(err, ErrPasswordFile) || !strings.Contains(err.Error(), s.Path) || !strings.Contains(err.Error(), "dmsnap passwd") {
			t.Errorf("%q: %v, want a damage report naming the file (not a wrong password)", text, err)
		}
	}
}

// argon2Line is a password file's line with the given parameters and a
// salt and a hash of the given lengths.
func argon2Line(m, tc, p, saltLen, keyLen int) string {
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s\n", m, tc, p,
		b64.EncodeToString(bytes.Repeat([]byte{'s'}, saltLen)), b64.EncodeToString(bytes.Repeat([]byte{'h'}, keyLen)))
}

// Regression: the parameters were read unbounded, and m=4294967295 made
// checking a password allocate 4 TiB (the CLI died with exit 2).
func TestParseArgon2Bounds(t *testing.T) {
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{argon2Line(64, 1, 1, 16, 32), true},
		{argon2Line(8, 1, 1, 8, 16), true},            // every lower bound
		{argon2Line(1<<20, 64, 64, 64, 64), true},     // every upper bound
		{argon2Line(4294967295, 1, 1, 16, 32), false}, // the crash
		{argon2Line(1<<20+1, 1, 1, 16, 32), false},
		{argon2Line(7, 1, 1, 16, 32), false},
		{argon2Line(8*4-1, 1, 4, 16, 32), false}, // under 8 KiB a lane
		{argon2Line(64, 65, 1, 16, 32), false},
		{argon2Line(64, 4294967295, 1, 16, 32), false},
		{argon2Line(1024, 1, 65, 16, 32), false},
		{argon2Line(1024, 1, 257, 16, 32), false}, // 257 would wrap to 1 in a uint8
		{argon2Line(64, 1, 0, 16, 32), false},
		{argon2Line(64, 1, 1, 7, 32), false},
		{argon2Line(64, 1, 1, 65, 32), false},
		{argon2Line(64, 1, 1, 16, 15), false},
		{argon2Line(64, 1, 1, 16, 65), false},
		{"$argon2id$v=19$m=64,m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA", false},
		{"$argon2id$v=19$m=64,t=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA", false},
		{"$argon2id$v=19$m=64,t=1,p=1$c2FsdHNh\nbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA", false},
	} {
		h, err := parseArgon2([]byte(tc.line))
		if (err == nil) != tc.ok {
			t.Errorf("%q: %+v %v, want ok %v", tc.line, h.p, err, tc.ok)
		}
	}
}

// Set refuses parameters out of bounds, so it never writes a file that
// would then be refused.
func TestSecretSetBounds(t *testing.T) {
	for _, p := range []Argon2Params{
		{Time: 65, MemoryKiB: 64, Threads: 1, SaltLen: 16, KeyLen: 32},
		{Time: 1, MemoryKiB: 1<<20 + 1, Threads: 1, SaltLen: 16, KeyLen: 32},
		{Time: 1, MemoryKiB: 1024, Threads: 65, SaltLen: 16, KeyLen: 32},
		{Time: 1, MemoryKiB: 64, Threads: 1, SaltLen: 65, KeyLen: 32},
		{Time: 1, MemoryKiB: 64, Threads: 1, SaltLen: 16, KeyLen: 65},
		{Time: 1, MemoryKiB: 64, Threads: 1, SaltLen: 7, KeyLen: 32},
	} {
		s := testSecret(t)
		s.Params = p
		if err := s.Set([]byte("pw")); err == nil {
			t.Errorf("Set with %+v: no error", p)
		}
		if _, err := os.Lstat(s.Path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Set with %+v wrote %s (%v)", p, s.Path, err)
		}
	}
}

// Regression: a dangling or planted link, or a damaged file, meant "no
// password" or could be replaced without the old one. Only a missing file
// means no password; anything else that is not a trusted hash refuses
// every use, and Set and Clear leave it for root to remove.
func TestSecretFailsClosed(t *testing.T) {
	ctx := context.Background()
	good := testSecret(t)
	if err := good.Set([]byte("pw")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		make  func(t *testing.T, path string)
		wants string // in the error
	}{
		{"dangling link", func(t *testing.T, path string) { mustOK(t, os.Symlink(filepath.Join(t.TempDir(), "gone"), path)) }, "symbolic link"},
		{"link to a good file", func(t *testing.T, path string) { mustOK(t, os.Symlink(good.Path, path)) }, "symbolic link"},
		{"directory", func(t *testing.T, path string) { mustOK(t, os.Mkdir(path, 0o700)) }, "not a regular file"},
		{"fifo", func(t *testing.T, path string) { mustOK(t, unix.Mkfifo(path, 0o600)) }, "not a regular file"},
		{"group-writable", func(t *testing.T, path string) { copyFile(t, good.Path, path, 0o620) }, "writable by others"},
		{"other-writable", func(t *testing.T, path string) { copyFile(t, good.Path, path, 0o602) }, "writable by others"},
		{"too long", func(t *testing.T, path string) {
			mustOK(t, os.WriteFile(path, bytes.Repeat([]byte("$argon2id"), 200), 0o600))
		}, "longer than"},
		{"m out of bounds", func(t *testing.T, path string) {
			mustOK(t, os.WriteFile(path, []byte(argon2Line(4294967295, 3, 2, 16, 32)), 0o600))
		}, "m=4294967295"},
	}
	if os.Geteuid() == 0 {
		cases = append(cases, struct {
			name  string
			make  func(t *testing.T, path string)
			wants string
		}{"owned by someone else", func(t *testing.T, path string) {
			copyFile(t, good.Path, path, 0o600)
			mustOK(t, os.Chown(path, 12345, 12345))
		}, "owned by uid 12345"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := testSecret(t)
			mustOK(t, os.MkdirAll(filepath.Dir(s.Path), 0o755))
			tc.make(t, s.Path)
			before, _ := os.Lstat(s.Path)
			if set, err := s.IsSet(); !errors.Is(err, ErrPasswordFile) || !strings.Contains(err.Error(), tc.wants) ||
				!strings.Contains(err.Error(), "rm "+s.Path) {
				t.Errorf("IsSet: %v %v, want an error saying %q and how to remove the file", set, err, tc.wants)
			}
			if err := s.Verify(ctx, []byte("pw")); !errors.Is(err, ErrPasswordFile) {
				t.Errorf("Verify of the right password: %v, want ErrPasswordFile", err)
			}
			asked := false
			if err := s.Require(ctx, func() ([]byte, error) { asked = true; return []byte("pw"), nil }); !errors.Is(err, ErrPasswordFile) || asked {
				t.Errorf("Require: %v (asked %v), want ErrPasswordFile before asking", err, asked)
			}
			if err := s.Set([]byte("new")); !errors.Is(err, ErrPasswordFile) {
				t.Errorf("Set over it: %v, want ErrPasswordFile", err)
			}
			if err := s.Clear(); !errors.Is(err, ErrPasswordFile) {
				t.Errorf("Clear: %v, want ErrPasswordFile", err)
			}
			if after, err := os.Lstat(s.Path); err != nil || !os.SameFile(before, after) {
				t.Errorf("the file was replaced or removed: %v", err)
			}
		})
	}
}

// Regression: the password file was <--state>/passwd, so
// `dmsnap --state /tmp/x deactivate` found none and asked for nothing.
func TestNewIsHostWide(t *testing.T) {
	if got := New().Path; got != "/var/lib/dmsnap/passwd" {
		t.Fatalf("New().Path = %q, want the host's /var/lib/dmsnap/passwd", got)
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	mustOK(t, err)
	mustOK(t, os.WriteFile(to, b, mode))
	mustOK(t, os.Chmod(to, mode)) // past the umask
}

func TestSecretRequire(t *testing.T) {
	ctx := context.Background()
	s := testSecret(t)
	asked := 0
	read := func(pw string) func() ([]byte, error) {
		return func() ([]byte, error) { asked++; return []byte(pw), nil }
	}
	if err := s.Require(ctx, read("x")); err != nil || asked != 0 {
		t.Fatalf("no secret: %v, asked %d times", err, asked)
	}
	s.Set([]byte("pw"))
	if err := s.Require(ctx, read("pw")); err != nil || asked != 1 {
		t.Fatalf("right: %v", err)
	}
	if err := s.Require(ctx, read("no")); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("wrong: %v", err)
	}
	boom := errors.New("no terminal")
	if err := s.Require(ctx, func() ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("read error: %v", err)
	}
}

func TestInputStdinAndFile(t *testing.T) {
	cases := map[string]string{
		"secret\n":           "secret",
		"secret\r\n":         "secret",
		"secret":             "secret",
		"two words\nignored": "two words",
		" spaced \n":         " spaced ",
	}
	for in, want := range cases {
		got, err := Input{Stdin: true, StdinReader: strings.NewReader(in)}.Read("")
		if err != nil || string(got) != want {
			t.Errorf("stdin %q: %q %v, want %q", in, got, err, want)
		}
		f := filepath.Join(t.TempDir(), "pw")
		os.WriteFile(f, []byte(in), 0o600)
		got, err = Input{File: f}.ReadNew("")
		if err != nil || string(got) != want {
			t.Errorf("file %q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "\n", "\r\n"} {
		if _, err := (Input{Stdin: true, StdinReader: strings.NewReader(in)}).Read(""); !errors.Is(err, ErrNoPassword) {
			t.Errorf("stdin %q: %v, want ErrNoPassword", in, err)
		}
	}
	long := strings.Repeat("x", maxPasswordLen)
	if got, err := (Input{Stdin: true, StdinReader: strings.NewReader(long + "\r\n")}).Read(""); err != nil || len(got) != maxPasswordLen {
		t.Errorf("longest password: %d %v", len(got), err)
	}
	if _, err := (Input{Stdin: true, StdinReader: strings.NewReader(long + "x\n")}).Read(""); err == nil {
		t.Error("over-long password accepted")
	}
	if _, err := (Input{Stdin: true, File: "x"}).Read(""); err == nil {
		t.Error("both sources accepted")
	}
	if _, err := (Input{File: "/nonexistent/pw"}).Read(""); err == nil {
		t.Error("missing file accepted")
	}
	// Not a terminal: a clear error naming the flags.
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	if _, err := (Input{Terminal: r}).Read("Password: "); err == nil || !strings.Contains(err.Error(), "--password-stdin") {
		t.Errorf("pipe as terminal: %v", err)
	}
}

// openPTY returns the master and slave of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty slave: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

func TestInputTerminalNoEcho(t *testing.T) {
	master, slave := openPTY(t)
	type result struct {
		pw  []byte
		err error
	}
	res := make(chan result, 1)
	go func() {
		pw, err := Input{Terminal: slave}.ReadNew("New password: ")
		res <- result{pw, err}
	}()
	// Read what the terminal shows while typing.
	var shown bytes.Buffer
	readUntil := func(want string) {
		buf := make([]byte, 256)
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(shown.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("terminal never showed %q; showed %q", want, shown.String())
			}
			master.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, _ := master.Read(buf)
			shown.Write(buf[:n])
		}
	}
	readUntil("New password: ")
	master.Write([]byte("hunter2\n"))
	readUntil("Repeat it: ")
	master.Write([]byte("hunter2\n"))
	r := <-res
	if r.err != nil || string(r.pw) != "hunter2" {
		t.Fatalf("ReadNew: %q %v", r.pw, r.err)
	}
	master.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	rest := make([]byte, 256)
	n, _ := master.Read(rest)
	shown.Write(rest[:n])
	if strings.Contains(shown.String(), "hunter2") {
		t.Fatalf("the password was echoed: %q", shown.String())
	}

	// Two different entries are refused.
	go func() {
		pw, err := Input{Terminal: slave}.ReadNew("New password: ")
		res <- result{pw, err}
	}()
	shown.Reset()
	readUntil("New password: ")
	master.Write([]byte("one\n"))
	readUntil("Repeat it: ")
	master.Write([]byte("two\n"))
	if r := <-res; r.err == nil || !strings.Contains(r.err.Error(), "differ") {
		t.Fatalf("mismatch: %q %v", r.pw, r.err)
	}
}

// TestPasswordPromptHelperProcess is not a test: TestPasswordPromptRestoresTerminalOnSignal
// runs the test binary with it to prompt on a given pty.
func TestPasswordPromptHelperProcess(t *testing.T) {
	path := os.Getenv("DMSNAP_PTY_HELPER")
	if path == "" {
		return
	}
	tty, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		os.Exit(2)
	}
	Input{Terminal: tty}.Read("Password: ")
	os.Exit(0)
}

func TestPasswordPromptRestoresTerminalOnSignal(t *testing.T) {
	master, slave := openPTY(t)
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil || before.Lflag&unix.ECHO == 0 {
		t.Fatalf("a new pty should echo: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPasswordPromptHelperProcess$")
	cmd.Env = append(os.Environ(), "DMSNAP_PTY_HELPER="+slave.Name())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var shown bytes.Buffer
	buf := make([]byte, 256)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(shown.String(), "Password: ") {
		if time.Now().After(deadline) {
			t.Fatalf("no prompt; shown %q", shown.String())
		}
		master.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, _ := master.Read(buf)
		shown.Write(buf[:n])
	}
	during, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if during.Lflag&unix.ECHO != 0 {
		t.Fatal("echo is on while the prompt waits")
	}
	cmd.Process.Signal(os.Interrupt)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != -1 {
		t.Fatalf("helper ended with %v, want death by the signal", err)
	}
	after, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if after.Lflag&unix.ECHO == 0 {
		t.Fatal("the interrupted prompt left the terminal without echo")
	}
}

// FuzzParseArgon2 feeds the password file's parser anything: it must not
// panic, whatever it accepts is within the bounds (so checking a password
// can neither exhaust memory nor run for days), and what it accepts
// survives a write and a read. No Argon2 is computed here, so the CI's
// 10000 inputs stay quick.
func FuzzParseArgon2(f *testing.F) {
	for _, seed := range []string{
		argon2Line(65536, 3, 2, 16, 32),
		argon2Line(8, 1, 1, 8, 16),
		argon2Line(1<<20, 64, 64, 64, 64),
		argon2Line(4294967295, 3, 2, 16, 32),
		argon2Line(64, 1, 257, 16, 32),
		argon2Line(64, 1, 1, 65, 65),
		"$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1,m=2$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2i$v=19$m=64,t=1,p=1$$",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseArgon2(b)
		if err != nil {
			return
		}
		if err := h.p.check(); err != nil {
			t.Fatalf("accepted %q out of bounds: %v", b, err)
		}
		if int(h.p.SaltLen) != len(h.salt) || int(h.p.KeyLen) != len(h.hash) {
			t.Fatalf("accepted %q: lengths %+v, salt %d, hash %d", b, h.p, len(h.salt), len(h.hash))
		}
		again, err := parseArgon2(h.format())
		if err != nil || again.p != h.p || !bytes.Equal(again.salt, h.salt) || !bytes.Equal(again.hash, h.hash) {
			t.Fatalf("accepted %q, but not its rewrite %q: %v", b, h.format(), err)
		}
	})
}
