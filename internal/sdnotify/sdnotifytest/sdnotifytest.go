// Package sdnotifytest listens for sd_notify(3) notifications as systemd
// does for a unit of Type=notify, for the tests of what sends them.
package sdnotifytest

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Socket is a $NOTIFY_SOCKET a test listens on.
type Socket struct {
	Addr string // the value for NOTIFY_SOCKET
	c    *net.UnixConn
}

// Listen opens a datagram socket at addr (a path, or '@' and an abstract
// name; "" is a path in t.TempDir()), closed when the test ends.
func Listen(t testing.TB, addr string) *Socket {
	t.Helper()
	if addr == "" {
		addr = filepath.Join(t.TempDir(), "notify")
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &Socket{Addr: addr, c: c}
}

// Next returns the next notification, or an error when none came within
// timeout.
func (s *Socket) Next(timeout time.Duration) (string, error) {
	buf := make([]byte, 4096)
	s.c.SetReadDeadline(time.Now().Add(timeout))
	n, err := s.c.Read(buf)
	return string(buf[:n]), err
}
