package sdnotify

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen opens a datagram socket at addr and returns a function that reads
// the next datagram.
func listen(t *testing.T, addr string) func() string {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return string(buf[:n])
	}
}

func TestNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	abstract := "@dmsnap-sdnotify-test-" + filepath.Base(t.TempDir())
	for _, addr := range []string{path, abstract} {
		read := listen(t, addr)
		t.Setenv("NOTIFY_SOCKET", addr)
		sent, err := Notify(Ready, Status("watching 2\ndevices"))
		if err != nil || !sent {
			t.Fatalf("%s: sent %v, %v", addr, sent, err)
		}
		if got, want := read(), "READY=1\nSTATUS=watching 2 devices\n"; got != want {
			t.Fatalf("%s: datagram %q, want %q", addr, got, want)
		}
	}
}

func TestNotifyWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify(Ready); sent || err != nil {
		t.Fatalf("no NOTIFY_SOCKET: sent %v, %v; want nothing done", sent, err)
	}
	for _, bad := range []string{"relative/path", filepath.Join(t.TempDir(), "nobody-listens")} {
		t.Setenv("NOTIFY_SOCKET", bad)
		if sent, err := Notify(Ready); sent || err == nil || !strings.Contains(err.Error(), "sd_notify") {
			t.Fatalf("NOTIFY_SOCKET %q: sent %v, %v; want an error", bad, sent, err)
		}
	}
}
