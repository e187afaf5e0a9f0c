// Package config reads dmsnap's configuration file, /etc/dmsnap/dmsnap.conf:
// the defaults of the global settings that flags and environment
// variables may override, so that every command of the host, the watcher's
// unit and an admin's shell use the same store without repeating it.
//
// The format is the one of many files in /etc: one "key = value" per line,
// blank lines and lines starting with '#' ignored, no quoting (a value is
// everything after the '=', spaces around it dropped). The keys:
//
//	store = /snapshot          where the sessions go (dmsnap --store)
//	state = /var/lib/dmsnap    registry and lock (dmsnap --state)
//
// An unknown key, a line without '=', a key given twice or a value that is
// not an absolute path is an error naming the file and the line: a typo
// must not send sessions somewhere else without a word.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Path is where the configuration file is looked for.
const Path = "/etc/dmsnap/dmsnap.conf"

// maxSize bounds the file read: a configuration is a few lines.
const maxSize = 64 << 10

// Config is what the file sets; an empty field is not set.
type Config struct {
	Store string
	State string
}

// Load reads the file at path. A missing file is no error: it sets nothing.
func Load(path string) (Config, error) {
	// Stat first: it takes no file descriptor, so a command run with none
	// to spare (as the tests of that case do) is not stopped by a file
	// that is not there.
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return Config{}, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Config{}, nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	defer f.Close()
	b, err := readAll(f)
	if err != nil {
		return Config{}, fmt.Errorf("configuration %s: %w", path, err)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("configuration %s: %w", path, err)
	}
	return c, nil
}

func readAll(f *os.File) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSize {
		return nil, fmt.Errorf("larger than %d bytes: not a dmsnap configuration", maxSize)
	}
	return b, nil
}

// Parse parses the file's text.
func Parse(b []byte) (Config, error) {
	var c Config
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxSize)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return Config{}, fmt.Errorf("line %d: %q is not key = value", n, line)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if first, dup := seen[key]; dup {
			return Config{}, fmt.Errorf("line %d: %s is set on line %d already", n, key, first)
		}
		seen[key] = n
		var field *string
		switch key {
		case "store":
			field = &c.Store
		case "state":
			field = &c.State
		default:
			return Config{}, fmt.Errorf("line %d: unknown key %q (the keys are store and state)", n, key)
		}
		if !filepath.IsAbs(value) || strings.ContainsAny(value, "\x00") {
			return Config{}, fmt.Errorf("line %d: %s = %q: want an absolute path", n, key, value)
		}
		*field = filepath.Clean(value)
	}
	if err := sc.Err(); err != nil {
		return Config{}, err
	}
	return c, nil
}
