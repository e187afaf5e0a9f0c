package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"golang.org/x/crypto/argon2"
)

// PasswordFile is the control secret's file name in the state directory.
const PasswordFile = "passwd"

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

// Secret is the control secret that activate and deactivate ask for when one
// is set (`dmsnap passwd`). Only a salted Argon2id hash is stored, in
// <state>/passwd, mode 0600, in the PHC string format:
//
//	$argon2id$v=19$m=65536,t=3,p=2$<salt, base64>$<hash, base64>
//
// The password itself is never stored, logged or taken from argv.
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

// NewSecret returns the control secret of a state directory.
func NewSecret(stateDir string) *Secret {
	return &Secret{Path: filepath.Join(stateDir, PasswordFile)}
}

// IsSet reports whether a control secret is set.
func (s *Secret) IsSet() (bool, error) {
	_, err := os.Stat(s.Path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("control secret: %w", err)
}

// Set stores a new control secret, replacing any old one atomically.
func (s *Secret) Set(password []byte) error {
	if len(password) == 0 {
		return fmt.Errorf("set control secret: %w: an empty password protects nothing", ErrNoPassword)
	}
	p := s.Params
	if p == (Argon2Params{}) {
		p = DefaultArgon2
	}
	if p.Time == 0 || p.MemoryKiB == 0 || p.Threads == 0 || p.SaltLen < 8 || p.KeyLen < 16 {
		return fmt.Errorf("set control secret: bad Argon2 parameters %+v", p)
	}
	salt := make([]byte, p.SaltLen)
	if _, err := rand.Read(salt); err != nil {
		return fmt.Errorf("set control secret: %w", err)
	}
	h := argon2.IDKey(password, salt, p.Time, p.MemoryKiB, p.Threads, p.KeyLen)
	line := fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s\n", argon2.Version, p.MemoryKiB, p.Time, p.Threads,
		b64.EncodeToString(salt), b64.EncodeToString(h))
	dir := filepath.Dir(s.Path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("set control secret: %w", err)
	}
	if err := atomicfile.WriteFile(s.Path, []byte(line), 0o600); err != nil {
		return fmt.Errorf("set control secret: %w", err)
	}
	return nil
}

// Clear removes the control secret; nothing asks for one afterwards.
func (s *Secret) Clear() error {
	if err := atomicfile.Remove(s.Path); err != nil {
		return fmt.Errorf("clear control secret: %w", err)
	}
	return nil
}

// Verify checks password against the stored hash in constant time. A wrong
// password is refused with ErrWrongPassword after the refusal delay (cut
// short by ctx). With no secret set, every password is accepted.
func (s *Secret) Verify(ctx context.Context, password []byte) error {
	b, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control secret: %w", err)
	}
	h, err := parseArgon2(b)
	if err != nil {
		return fmt.Errorf("control secret %s: %w; set it again with `dmsnap passwd`", s.Path, err)
	}
	got := argon2.IDKey(password, h.salt, h.p.Time, h.p.MemoryKiB, h.p.Threads, uint32(len(h.hash)))
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

// Require asks for and checks the control secret when one is set: read is
// called only then (so nobody is prompted on a machine with no secret).
func (s *Secret) Require(ctx context.Context, read func() ([]byte, error)) error {
	set, err := s.IsSet()
	if err != nil || !set {
		return err
	}
	pw, err := read()
	if err != nil {
		return err
	}
	defer clear(pw)
	return s.Verify(ctx, pw)
}

var b64 = base64.RawStdEncoding

type argon2Hash struct {
	p    Argon2Params
	salt []byte
	hash []byte
}

func parseArgon2(b []byte) (argon2Hash, error) {
	line := string(bytes.TrimSpace(b))
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	f := strings.Split(line, "$")
	if len(f) != 6 || f[0] != "" || f[1] != "argon2id" {
		return argon2Hash{}, errors.New("not an argon2id hash")
	}
	if f[2] != "v="+strconv.Itoa(argon2.Version) {
		return argon2Hash{}, fmt.Errorf("argon2 version %q is not supported", f[2])
	}
	var h argon2Hash
	for _, kv := range strings.Split(f[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil || n == 0 {
			return argon2Hash{}, fmt.Errorf("bad argon2 parameter %q", kv)
		}
		switch k {
		case "m":
			h.p.MemoryKiB = uint32(n)
		case "t":
			h.p.Time = uint32(n)
		case "p":
			if n > 255 {
				return argon2Hash{}, fmt.Errorf("bad argon2 parameter %q", kv)
			}
			h.p.Threads = uint8(n)
		default:
			return argon2Hash{}, fmt.Errorf("unknown argon2 parameter %q", kv)
		}
	}
	if h.p.MemoryKiB == 0 || h.p.Time == 0 || h.p.Threads == 0 {
		return argon2Hash{}, errors.New("argon2 parameters m, t and p are all required")
	}
	var err error
	if h.salt, err = b64.DecodeString(f[4]); err != nil || len(h.salt) < 8 {
		return argon2Hash{}, errors.New("bad argon2 salt")
	}
	if h.hash, err = b64.DecodeString(f[5]); err != nil || len(h.hash) < 16 {
		return argon2Hash{}, errors.New("bad argon2 hash")
	}
	return h, nil
}
