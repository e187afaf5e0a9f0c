package session_test

import (
	"github.com/dmsnap/dmsnap/session"
	"golang.org/x/sys/unix"
)

func storeDev(path string) (session.DevNum, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return session.DevNum{}, err
	}
	return session.DevNumFromRdev(st.Dev), nil
}
