package passwd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// maxPasswordLen bounds what is read from a file or stdin.
const maxPasswordLen = 4096

// Input says where a password comes from, mirroring the flags:
// --password-stdin (Stdin set, read from StdinReader), --password-file FILE
// (File), or else a prompt on the controlling terminal with echo off. A
// password is never taken from argv.
type Input struct {
	Stdin       bool      // --password-stdin
	StdinReader io.Reader // what --password-stdin reads (os.Stdin when nil)
	File        string    // --password-file
	// Terminal is where to prompt; nil opens /dev/tty.
	Terminal *os.File
}

// Read returns the password. From stdin or a file it is the first line,
// without its line ending; on a terminal the prompt is shown and the typed
// text is not echoed. An empty password is ErrNoPassword.
func (in Input) Read(prompt string) ([]byte, error) {
	switch {
	case in.Stdin && in.File != "":
		return nil, errors.New("give --password-stdin or --password-file, not both")
	case in.Stdin:
		r := in.StdinReader
		if r == nil {
			r = os.Stdin
		}
		return firstLine(r, "standard input")
	case in.File != "":
		f, err := os.Open(in.File)
		if err != nil {
			return nil, fmt.Errorf("password file: %w", err)
		}
		defer f.Close()
		return firstLine(f, in.File)
	}
	tty, closeTTY, err := in.terminal()
	if err != nil {
		return nil, err
	}
	defer closeTTY()
	return readHidden(tty, prompt)
}

// ReadNew reads a new password: from stdin or a file as Read does, on a
// terminal twice, and the two must match.
func (in Input) ReadNew(prompt string) ([]byte, error) {
	if in.Stdin || in.File != "" {
		return in.Read(prompt)
	}
	tty, closeTTY, err := in.terminal()
	if err != nil {
		return nil, err
	}
	defer closeTTY()
	a, err := readHidden(tty, prompt)
	if err != nil {
		return nil, err
	}
	b, err := readHidden(tty, "Repeat it: ")
	if err != nil {
		clear(a)
		return nil, err
	}
	defer clear(b)
	if !bytes.Equal(a, b) {
		clear(a)
		return nil, errors.New("the two passwords differ; nothing changed")
	}
	return a, nil
}

func (in Input) terminal() (*os.File, func(), error) {
	if in.Terminal != nil {
		return in.Terminal, func() {}, nil
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("no terminal to ask for the password (%v): use --password-stdin or --password-file", err)
	}
	return tty, func() { tty.Close() }, nil
}

// readHidden prompts on tty and reads a line with echo off. Echo is turned
// off before the prompt is written, so nothing typed after the prompt shows
// (term.ReadPassword turns it off only once called, after the prompt, and
// a fast typist's first keys would be echoed). The terminal is restored
// afterwards, and also when a signal ends the program meanwhile.
func readHidden(tty *os.File, prompt string) ([]byte, error) {
	fd := int(tty.Fd())
	if !term.IsTerminal(fd) {
		return nil, fmt.Errorf("%s is not a terminal: use --password-stdin or --password-file", tty.Name())
	}
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("read password: %w", err)
	}
	hidden := *old
	hidden.Lflag &^= unix.ECHO
	hidden.Lflag |= unix.ICANON | unix.ISIG
	hidden.Iflag |= unix.ICRNL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &hidden); err != nil {
		return nil, fmt.Errorf("read password: %w", err)
	}
	var once sync.Once
	restore := func() { once.Do(func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }) }
	defer restore()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	defer func() { signal.Stop(sigs); close(sigs) }()
	go func() {
		if sig, ok := <-sigs; ok {
			restore()
			io.WriteString(tty, "\n")
			signal.Reset(sig)
			unix.Kill(os.Getpid(), sig.(unix.Signal))
		}
	}()

	if _, err := io.WriteString(tty, prompt); err != nil {
		return nil, err
	}
	line, err := readLine(fd)
	io.WriteString(tty, "\n") // the user's Enter was not echoed either
	if err != nil {
		clear(line)
		return nil, fmt.Errorf("read password: %w", err)
	}
	if len(line) == 0 {
		return nil, ErrNoPassword
	}
	return line, nil
}

// readLine reads up to a newline, byte by byte (the terminal delivers a
// line at a time in canonical mode; reading no further leaves what follows
// for the next reader).
func readLine(fd int) ([]byte, error) {
	var line []byte
	var b [1]byte
	for {
		n, err := unix.Read(fd, b[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return line, err
		}
		if n == 0 || b[0] == '\n' {
			if n == 0 && len(line) == 0 {
				return nil, io.EOF
			}
			return bytes.TrimSuffix(line, []byte("\r")), nil
		}
		if len(line) >= maxPasswordLen {
			return line, fmt.Errorf("longer than %d bytes", maxPasswordLen)
		}
		line = append(line, b[0])
	}
}

func firstLine(r io.Reader, what string) ([]byte, error) {
	// Room for the longest password and its "\r\n".
	br := bufio.NewReaderSize(io.LimitReader(r, maxPasswordLen+2), 512)
	line, err := br.ReadBytes('\n')
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read password from %s: %w", what, err)
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > maxPasswordLen {
		return nil, fmt.Errorf("read password from %s: longer than %d bytes", what, maxPasswordLen)
	}
	if len(line) == 0 {
		return nil, fmt.Errorf("%s: %w", what, ErrNoPassword)
	}
	return line, nil
}
