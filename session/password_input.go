package session

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// maxPasswordLen bounds what is read from a file or stdin.
const maxPasswordLen = 4096

// PasswordInput says where a password comes from, mirroring the flags:
// --password-stdin (Stdin set, read from StdinReader), --password-file FILE
// (File), or else a prompt on the controlling terminal with echo off. A
// password is never taken from argv.
type PasswordInput struct {
	Stdin       bool      // --password-stdin
	StdinReader io.Reader // what --password-stdin reads (os.Stdin when nil)
	File        string    // --password-file
	// Terminal is where to prompt; nil opens /dev/tty.
	Terminal *os.File
}

// Read returns the password. From stdin or a file it is the first line,
// without its line ending; on a terminal the prompt is shown and the typed
// text is not echoed. An empty password is ErrNoPassword.
func (in PasswordInput) Read(prompt string) ([]byte, error) {
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
func (in PasswordInput) ReadNew(prompt string) ([]byte, error) {
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

func (in PasswordInput) terminal() (*os.File, func(), error) {
	if in.Terminal != nil {
		return in.Terminal, func() {}, nil
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("no terminal to ask for the password (%v): use --password-stdin or --password-file", err)
	}
	return tty, func() { tty.Close() }, nil
}

func readHidden(tty *os.File, prompt string) ([]byte, error) {
	fd := int(tty.Fd())
	if !term.IsTerminal(fd) {
		return nil, fmt.Errorf("%s is not a terminal: use --password-stdin or --password-file", tty.Name())
	}
	if _, err := io.WriteString(tty, prompt); err != nil {
		return nil, err
	}
	pw, err := term.ReadPassword(fd)
	io.WriteString(tty, "\n") // the user's Enter was not echoed either
	if err != nil {
		return nil, fmt.Errorf("read password: %w", err)
	}
	if len(pw) == 0 {
		return nil, ErrNoPassword
	}
	return pw, nil
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
