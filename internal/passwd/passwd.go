// Package passwd is dmsnap's control password: the Argon2id hash file that
// the commands removing protection or restore points check (Secret), its
// bounded parser, and reading a password from a terminal, standard input or
// a file (Input). The password itself is never stored, logged or taken from
// argv.
package passwd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"golang.org/x/crypto/argon2"
	"golang.org/x/sys/unix"
)

// File is the control secret's file name.
const File = "passwd"

// Path is the control secret of the host, whatever --state says: one host,
// one password, so that pointing a command at another state directory
// cannot skip it. It is File in the default state directory
// (session.DefaultStateDir; a test of cmd/dmsnap checks they agree).
const Path = "/var/lib/dmsnap/" + File

// Sentinel errors. The CLI maps them to exit codes and hints; errors.Is
// works through every wrapper this package returns.
var (
	// ErrWrongPassword: the control secret did not match (exit code 3).
	ErrWrongPassword = errors.New("wrong password")
	// ErrNoPassword: a password was needed to set or check but none was given.
	ErrNoPassword = errors.New("no password given")
	// ErrPasswordFile: the control password file is there but cannot be
	// trusted (a symbolic link, damaged, ...); commands that need the
	// password fail closed until root removes it.
	ErrPasswordFile = errors.New("control password file cannot be trusted")
)

// DefaultRefusalDelay is how long a wrong password waits before it is
// refused, so guessing is slow even where Argon2 alone would not be.
const DefaultRefusalDelay = 2 * time.Second

// Argon2Params are the Argon2id cost parameters (RFC 9106).
type Argon2Params struct {
	Time      uint32 // passes
	MemoryKiB uint32
	Threads   uint8
	SaltLen   uint32 // bytes
	KeyLen    uint32 // bytes
}

// DefaultArgon2 is RFC 9106's second recommended option (t=3, 64 MiB),
// with two lanes to suit small machines.
var DefaultArgon2 = Argon2Params{Time: 3, MemoryKiB: 64 << 10, Threads: 2, SaltLen: 16, KeyLen: 32}

// Bounds on the Argon2 parameters, for Set and for what is read back. The
// file is trusted only as far as these go: unbounded, m=4294967295 would
// make checking a password allocate 4 TiB, and t or p as large would make
// it run for days.
const (
	maxArgon2MemoryKiB = 1 << 20 // 1 GiB; the least is 8 KiB a lane (RFC 9106)
	maxArgon2Time      = 64
	maxArgon2Threads   = 64
	minArgon2SaltLen   = 8
	maxArgon2SaltLen   = 64
	minArgon2KeyLen    = 16
	maxArgon2KeyLen    = 64
)

// check reports the first parameter out of bounds.
func (p Argon2Params) check() error {
	switch {
	case p.Threads < 1 || p.Threads > maxArgon2Threads:
		return fmt.Errorf("argon2 p=%d: want 1 to %d", p.Threads, maxArgon2Threads)
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > maxArgon2MemoryKiB:
		return fmt.Errorf("argon2 m=%d: want %d (8 KiB a lane) to %d KiB", p.MemoryKiB, 8*uint32(p.Threads), maxArgon2MemoryKiB)
	case p.Time < 1 || p.Time > maxArgon2Time:
		return fmt.Errorf("argon2 t=%d: want 1 to %d", p.Time, maxArgon2Time)
	case p.SaltLen < minArgon2SaltLen || p.SaltLen > maxArgon2SaltLen:
		return fmt.Errorf("argon2 salt of %d bytes: want %d to %d", p.SaltLen, minArgon2SaltLen, maxArgon2SaltLen)
	case p.KeyLen < minArgon2KeyLen || p.KeyLen > maxArgon2KeyLen:
		return fmt.Errorf("argon2 hash of %d bytes: want %d to %d", p.KeyLen, minArgon2KeyLen, maxArgon2KeyLen)
	}
	return nil
}

// Secret is the control secret that the commands removing protection or
// restore points ask for when one is set (`dmsnap passwd`). Only a salted
// Argon2id hash is stored, in Path, mode 0600, in the PHC string
// format:
//
//	$argon2id$v=19$m=65536,t=3,p=2$<salt, base64>$<hash, base64>
//
// The password itself is never stored, logged or taken from argv.
//
// The file fails closed: only its absence means "no password". A file
// that is there but not trusted (a symbolic link, dangling or not, not a
// regular file, writable by others, owned by someone else than root or
// us, unreadable, damaged, parameters out of bounds) refuses every command
// that needs the password, and cannot be replaced or cleared through
// dmsnap either; root removes it by hand. Otherwise whoever could break or
// swap the file would have turned the password off.
type Secret struct {
	Path string
	// Params are used by Set; the zero value means DefaultArgon2. Verify
	// uses the parameters stored with the hash.
	Params Argon2Params
	// RefusalDelay is how long Verify waits before returning
	// ErrWrongPassword: 0 means DefaultRefusalDelay, negative means none
	// (tests).
	RefusalDelay time.Duration
}

// New returns the control secret of the host (Path).
func New() *Secret {
	return &Secret{Path: Path}
}

// IsSet reports whether a control secret is set. A password file that is
// there but cannot be trusted is an error wrapping ErrPasswordFile.
func (s *Secret) IsSet() (bool, error) {
	_, set, err := s.load()
	return set, err
}

// Set stores a new control secret, replacing any old one atomically. An
// old file that cannot be trusted is not replaced (see Secret).
func (s *Secret) Set(password []byte) error {
	if len(password) == 0 {
		return fmt.Errorf("set control secret: %w: an empty password protects nothing", ErrNoPassword)
	}
	p := s.Params
	if p == (Argon2Params{}) {
		p = DefaultArgon2
	}
	if err := p.check(); err != nil {
		return fmt.Errorf("set control secret: %w", err)
	}
	if _, _, err := s.load(); err != nil {
		return err
	}
	h := argon2Hash{p: p, salt: make([]byte, p.SaltLen)}
	if _, err := rand.Read(h.salt); err != nil {
		return fmt.Errorf("set control secret: %w", err)
	}
	h.hash = argon2.IDKey(password, h.salt, p.Time, p.MemoryKiB, p.Threads, p.KeyLen)
	if err := os.MkdirAll(filepath.Dir(s.Path), 0o755); err != nil {
		return fmt.Errorf("set control secret: %w", err)
	}
	if err := atomicfile.WriteFile(s.Path, h.format(), 0o600); err != nil {
		return fmt.Errorf("set control secret: %w", err)
	}
	return nil
}

// Clear removes the control secret; nothing asks for one afterwards. A file
// that cannot be trusted is left for root to remove (see Secret).
func (s *Secret) Clear() error {
	if _, _, err := s.load(); err != nil {
		return err
	}
	if err := atomicfile.Remove(s.Path); err != nil {
		return fmt.Errorf("clear control secret: %w", err)
	}
	return nil
}

// Verify checks password against the stored hash in constant time. A wrong
// password is refused with ErrWrongPassword after the refusal delay (cut
// short by ctx). With no secret set, every password is accepted.
func (s *Secret) Verify(ctx context.Context, password []byte) error {
	h, set, err := s.load()
	if err != nil || !set {
		return err
	}
	return s.verify(ctx, h, password)
}

// Require asks for and checks the control secret when one is set: read is
// called only then (so nobody is prompted on a machine with no secret).
func (s *Secret) Require(ctx context.Context, read func() ([]byte, error)) error {
	h, set, err := s.load()
	if err != nil || !set {
		return err
	}
	pw, err := read()
	if err != nil {
		return err
	}
	defer clear(pw)
	return s.verify(ctx, h, pw)
}

func (s *Secret) verify(ctx context.Context, h argon2Hash, password []byte) error {
	got := argon2.IDKey(password, h.salt, h.p.Time, h.p.MemoryKiB, h.p.Threads, h.p.KeyLen)
	if subtle.ConstantTimeCompare(got, h.hash) == 1 {
		return nil
	}
	delay := s.RefusalDelay
	if delay == 0 {
		delay = DefaultRefusalDelay
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return ErrWrongPassword
}

// maxPasswordFileSize bounds what is read of the password file: a hash
// within the bounds is a line of under 250 bytes.
const maxPasswordFileSize = 1024

// load reads the password file: set is false only when there is no file.
// The file is opened without following a symbolic link, and its checks are
// made on what was opened, so it cannot be swapped between them.
func (s *Secret) load() (h argon2Hash, set bool, err error) {
	f, err := os.OpenFile(s.Path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return argon2Hash{}, false, nil
	case errors.Is(err, unix.ELOOP):
		what := "is a symbolic link"
		if target, lerr := os.Readlink(s.Path); lerr == nil {
			what += " to " + target
		}
		return argon2Hash{}, false, s.untrusted(what)
	case errors.Is(err, fs.ErrPermission):
		return argon2Hash{}, false, fmt.Errorf("control password file %s: %w: run dmsnap as root", s.Path, err)
	case err != nil:
		return argon2Hash{}, false, s.untrusted(err.Error())
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return argon2Hash{}, false, fmt.Errorf("control password file %s: %w", s.Path, err)
	}
	if what := untrustedMode(fi); what != "" {
		return argon2Hash{}, false, s.untrusted(what)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPasswordFileSize+1))
	if err != nil {
		return argon2Hash{}, false, s.untrusted("cannot be read: " + err.Error())
	}
	if len(b) > maxPasswordFileSize {
		return argon2Hash{}, false, s.untrusted(fmt.Sprintf("is longer than %d bytes: not a password hash", maxPasswordFileSize))
	}
	if h, err = parseArgon2(b); err != nil {
		return argon2Hash{}, false, s.untrusted("is damaged: " + err.Error())
	}
	return h, true, nil
}

// untrustedMode says why an opened password file cannot be trusted, or ""
// when it can: a regular file, owned by root or by us (who wrote it), that
// no one else may write.
func untrustedMode(fi fs.FileInfo) string {
	if !fi.Mode().IsRegular() {
		return fmt.Sprintf("is not a regular file (%v)", fi.Mode().Type())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Sprintf("is writable by others (mode %04o)", fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Sprintf("is owned by uid %d, neither root nor this user", st.Uid)
	}
	return ""
}

func (s *Secret) untrusted(what string) error {
	return fmt.Errorf("%w: %s %s; every command that needs the password is refused until it is fixed: as root, look at it, remove it (rm %s) and set the password again with `dmsnap passwd`",
		ErrPasswordFile, s.Path, what, s.Path)
}

var b64 = base64.RawStdEncoding

// argon2Hash is the content of the password file; p.SaltLen and p.KeyLen
// are the lengths of salt and hash.
type argon2Hash struct {
	p    Argon2Params
	salt []byte
	hash []byte
}

// format is the file's line for h.
func (h argon2Hash) format() []byte {
	return fmt.Appendf(nil, "$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s\n", argon2.Version, h.p.MemoryKiB, h.p.Time, h.p.Threads,
		b64.EncodeToString(h.salt), b64.EncodeToString(h.hash))
}

// parseArgon2 reads a password file's line. Every parameter is bounded
// (Argon2Params.check) before anything is allocated for it.
func parseArgon2(b []byte) (argon2Hash, error) {
	line := string(bytes.TrimSpace(b))
	for _, c := range []byte(line) {
		if c <= ' ' || c > '~' {
			return argon2Hash{}, errors.New("not a single line of printable characters")
		}
	}
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	f := strings.Split(line, "$")
	if len(f) != 6 || f[0] != "" || f[1] != "argon2id" {
		return argon2Hash{}, errors.New("not an argon2id hash")
	}
	if f[2] != "v="+strconv.Itoa(argon2.Version) {
		return argon2Hash{}, fmt.Errorf("argon2 version %q is not supported", f[2])
	}
	var h argon2Hash
	seen := map[string]bool{}
	for _, kv := range strings.Split(f[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil || seen[k] {
			return argon2Hash{}, fmt.Errorf("bad argon2 parameter %q", kv)
		}
		seen[k] = true
		switch k {
		case "m":
			h.p.MemoryKiB = uint32(n)
		case "t":
			h.p.Time = uint32(n)
		case "p":
			if n > maxArgon2Threads {
				return argon2Hash{}, fmt.Errorf("argon2 p=%d: want 1 to %d", n, maxArgon2Threads)
			}
			h.p.Threads = uint8(n)
		default:
			return argon2Hash{}, fmt.Errorf("unknown argon2 parameter %q", kv)
		}
	}
	if len(seen) != 3 {
		return argon2Hash{}, errors.New("argon2 parameters m, t and p are all required")
	}
	var err error
	if h.salt, err = decodeBounded(f[4], maxArgon2SaltLen); err != nil {
		return argon2Hash{}, fmt.Errorf("argon2 salt: %w", err)
	}
	if h.hash, err = decodeBounded(f[5], maxArgon2KeyLen); err != nil {
		return argon2Hash{}, fmt.Errorf("argon2 hash: %w", err)
	}
	h.p.SaltLen, h.p.KeyLen = uint32(len(h.salt)), uint32(len(h.hash))
	if err := h.p.check(); err != nil {
		return argon2Hash{}, err
	}
	return h, nil
}

// decodeBounded decodes base64 s, refusing it before decoding when it would
// give more than max bytes.
func decodeBounded(s string, max int) ([]byte, error) {
	if b64.DecodedLen(len(s)) > max {
		return nil, fmt.Errorf("longer than %d bytes", max)
	}
	b, err := b64.DecodeString(s)
	if err != nil {
		return nil, errors.New("not base64")
	}
	return b, nil
}
