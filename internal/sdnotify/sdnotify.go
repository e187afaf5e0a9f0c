// Package sdnotify tells the service manager about the service's state, as
// sd_notify(3) does: one datagram of "KEY=VALUE" lines to the unix socket
// named by $NOTIFY_SOCKET (a path, or an abstract address starting with
// '@'). systemd sets the variable for a unit of Type=notify; elsewhere it is
// unset and Notify does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// The states dmsnap sends (sd_notify(3) lists them all).
const (
	Ready    = "READY=1"    // started: the service does its job from now on
	Stopping = "STOPPING=1" // stopping: a conversion may still be finishing
)

// Status is the STATUS= line systemctl status shows, on one line.
func Status(s string) string {
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

// Notify sends the lines to $NOTIFY_SOCKET. It reports whether they were
// sent: false, with no error, when the variable is unset.
func Notify(lines ...string) (bool, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return false, nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		return false, fmt.Errorf("sd_notify: NOTIFY_SOCKET %q is neither a path nor an abstract address", addr)
	}
	// Go maps a leading '@' to the abstract namespace.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(lines, "\n") + "\n")); err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	return true, nil
}
