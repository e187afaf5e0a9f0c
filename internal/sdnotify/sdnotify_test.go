package sdnotify

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/sdnotify/sdnotifytest"
)

func TestNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	abstract := "@dmsnap-sdnotify-test-" + filepath.Base(t.TempDir())
	for _, addr := range []string{path, abstract} {
		sock := sdnotifytest.Listen(t, addr)
		t.Setenv("NOTIFY_SOCKET", sock.Addr)
		sent, err := Notify(Ready, Status("watching 2\ndevices"))
		if err != nil || !sent {
			t.Fatalf("%s: sent %v, %v", addr, sent, err)
		}
		if got, err := sock.Next(5 * time.Second); err != nil || got != "READY=1\nSTATUS=watching 2 devices\n" {
			t.Fatalf("%s: datagram %q, %v; want READY=1 and the status", addr, got, err)
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
