package snapstore

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
)

// Sentinel errors. Every damage report is a *FormatError that unwraps to one
// of them, so callers can use errors.Is without parsing messages.
var (
	// ErrCorrupt: bytes on disk contradict the format (bad magic, a record
	// pointing nowhere, overlapping records, ...).
	ErrCorrupt = errors.New("corrupt")
	// ErrTruncated: a file ends before the format says it may.
	ErrTruncated = errors.New("truncated")
	// ErrChecksum: a checksum recorded by dmsnap does not match the bytes.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrUnsupportedVersion: the file was written in a format version this
	// dmsnap does not know (newer dmsnap, or a kernel store version other
	// than 1).
	ErrUnsupportedVersion = errors.New("unsupported format version")
	// ErrIncomplete: the session directory has no meta.json, so it is not a
	// finished session (still armed or open, or its conversion was
	// interrupted). It must never be read as if it were complete.
	ErrIncomplete = errors.New("session incomplete (no meta.json)")
	// ErrUninitialized: the COW file's first four bytes are zero: the kernel
	// never initialised it, so it holds no exceptions.
	ErrUninitialized = errors.New("COW store never initialised by the kernel")
	// ErrNotClosed: Convert was asked to convert a session that is still
	// armed or open; its snapshot may still be writing the COW file.
	ErrNotClosed = errors.New("session not closed")
	// ErrCannotVerify: the operating system would not hand over the bytes
	// of a session's file (permission denied, too many open files, an I/O
	// error, ...): nothing is known about the session, which is not
	// damaged for all this tells. The error wraps the OS's (an
	// *os.PathError); see ClassifyReadError.
	ErrCannotVerify = errors.New("cannot verify")
)

// ClassifyReadError sorts an error met while reading a session's files into
// damage or a failure to read, by the rule of FORMAT.md section 10:
//
//   - a file the format requires that is missing (ENOENT), or a path that is
//     not a regular file where the format puts one (EISDIR, ENOTDIR, ELOOP),
//     is damage: what the store holds contradicts the format, and reading
//     again will not change it. It becomes a *FormatError naming the file.
//   - any other error of the OS (EACCES, EPERM, EMFILE, ENFILE, ENOMEM,
//     EIO, ...) says nothing about the session's bytes: fixing the cause
//     and reading again may well succeed. It is wrapped so that
//     errors.Is(err, ErrCannotVerify) holds.
//   - nil, a *FormatError, an error already wrapping ErrCannotVerify and an
//     error that is not the OS's (a context's, say) are returned as they
//     are.
func ClassifyReadError(err error) error {
	var errno syscall.Errno
	if err == nil || errors.As(err, new(*FormatError)) || errors.Is(err, ErrCannotVerify) || !errors.As(err, &errno) {
		return err
	}
	file := "session file"
	var pe *fs.PathError
	if errors.As(err, &pe) {
		file = pe.Path
	}
	switch errno {
	case syscall.ENOENT:
		return formatErr(file, -1, -1, ErrCorrupt, "the file is missing (%v)", err)
	case syscall.EISDIR, syscall.ENOTDIR, syscall.ELOOP:
		return formatErr(file, -1, -1, ErrCorrupt, "not a regular file (%v)", err)
	}
	return fmt.Errorf("%w: %w", ErrCannotVerify, err)
}

// FormatError reports damage in one of the session's files.
type FormatError struct {
	File   string // file name or path, e.g. "/snapshot/sdb1_1700000000/blocks.map"
	Offset int64  // byte offset of the damage in File, or -1 when not known
	Record int64  // record / exception index, or -1 when not applicable
	Kind   error  // one of the sentinel errors above
	Msg    string // what is wrong, in words
}

func (e *FormatError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Record >= 0 {
		fmt.Fprintf(&b, ": record %d", e.Record)
	}
	if e.Offset >= 0 {
		fmt.Fprintf(&b, " at offset %d", e.Offset)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Kind != nil {
		b.WriteString(" (")
		b.WriteString(e.Kind.Error())
		b.WriteString(")")
	}
	return b.String()
}

func (e *FormatError) Unwrap() error { return e.Kind }

func formatErr(file string, offset, record int64, kind error, format string, args ...any) *FormatError {
	return &FormatError{File: file, Offset: offset, Record: record, Kind: kind, Msg: fmt.Sprintf(format, args...)}
}
