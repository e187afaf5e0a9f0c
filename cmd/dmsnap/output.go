package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Output. Every command that prints takes --json (a global flag) and then
// prints one JSON document on stdout, the envelope:
//
//	{"schema": 1, "command": "sessions list", "result": ...}
//
// or, when the command failed, "error": {"message": ..., "exit_code": N}
// in place of "result" (the message goes to stderr too). "schema" changes
// only when a result's shape changes incompatibly; fields may be added
// without. Times in JSON are RFC 3339 in UTC; in text they are local, with
// the zone.

// jsonSchema is the envelope's schema version.
const jsonSchema = 1

type envelope struct {
	Schema  int        `json:"schema"`
	Command string     `json:"command"`
	Result  any        `json:"result,omitempty"`
	Error   *jsonError `json:"error,omitempty"`
}

type jsonError struct {
	Message  string `json:"message"`
	ExitCode int    `json:"exit_code"`
}

// emit prints a command's result: v in the envelope with --json, else
// what text writes (nil: the caller prints its text itself, after checking
// e.json).
func (e *env) emit(v any, text func(w io.Writer) error) error {
	if e.json {
		e.emitted = true
		return printJSON(e.stdout, envelope{Schema: jsonSchema, Command: e.command, Result: v})
	}
	return text(e.stdout)
}

// emitError prints the envelope of a failed command with --json, unless
// the command printed its result already.
func (e *env) emitError(err error, code int) {
	if e.json && !e.emitted {
		printJSON(e.stdout, envelope{Schema: jsonSchema, Command: e.command, Error: &jsonError{Message: err.Error(), ExitCode: code}})
	}
}

// printJSON writes v indented, with a final newline.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// timeOrNil returns a pointer to t in UTC, nil when zero, so JSON omits it.
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// localTime is t as text shows it: local time with the zone.
func localTime(t time.Time) string {
	return t.Local().Format("2006-01-02 15:04:05 MST")
}

// columns are a list command's output fields, as -o picks them.
type columns[T any] struct {
	names []string                  // the default ones, in order
	head  map[string]string         // heading of each field
	value map[string]func(T) string // its text
}

// allNames lists every field, the default ones first.
func (c columns[T]) allNames() []string {
	out := slices.Clone(c.names)
	var more []string
	for n := range c.value {
		if !slices.Contains(out, n) {
			more = append(more, n)
		}
	}
	slices.Sort(more)
	return append(out, more...)
}

// pick returns the fields -o asks for ("" or "all": every one), refusing
// an unknown one.
func (c columns[T]) pick(spec string) ([]string, error) {
	if spec == "" || spec == "all" {
		return c.names, nil
	}
	var out []string
	for _, f := range strings.Split(spec, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if _, ok := c.value[f]; !ok {
			return nil, usagef("-o %s: unknown field %q (the fields: %s)", spec, f, strings.Join(c.allNames(), ","))
		}
		out = append(out, f)
	}
	return out, nil
}

// write prints rows of the fields picked, tab-separated for a tabwriter,
// with a heading line unless noHead.
func (c columns[T]) write(w io.Writer, fields []string, rows []T, noHead bool) {
	if !noHead {
		heads := make([]string, len(fields))
		for i, f := range fields {
			heads[i] = c.head[f]
		}
		fmt.Fprintln(w, strings.Join(heads, "\t"))
	}
	for _, r := range rows {
		vals := make([]string, len(fields))
		for i, f := range fields {
			vals[i] = c.value[f](r)
		}
		fmt.Fprintln(w, strings.Join(vals, "\t"))
	}
}

// textWidth is the width prose output is wrapped to: a terminal of 80
// columns shows every line whole, and logs read the same.
const textWidth = 80

// say prints a paragraph of prose wrapped at textWidth columns. Words are
// never split: a path or ID longer than a line gets a line of its own.
func say(w io.Writer, format string, a ...any) {
	fmt.Fprintln(w, wrapText(fmt.Sprintf(format, a...), textWidth))
}

// wrapText breaks s at spaces so that no line is longer than width
// (runes), except a single word that is longer by itself.
func wrapText(s string, width int) string {
	var b strings.Builder
	n := 0
	for _, word := range strings.Fields(s) {
		l := utf8.RuneCountInString(word)
		switch {
		case n == 0:
		case n+1+l > width:
			b.WriteByte('\n')
			n = 0
		default:
			b.WriteByte(' ')
			n++
		}
		b.WriteString(word)
		n += l
	}
	return b.String()
}
