// Package units parses the durations and sizes given on dmsnap's command
// line (--older-than, --chunk-size, --prealloc). It refuses what it cannot
// represent exactly rather than rounding or wrapping: a duration that
// overflowed once made `sessions prune --older-than 106752d` remove every
// finished session. It decides nothing about what a value is used for;
// callers bound it further (a chunk size, say).
package units

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MaxAge is the longest duration ParseAge accepts: 100 years of 365.25
// days. Nothing dmsnap keeps is that old, so a longer one is a mistake; and
// the bound keeps every accepted age far from time.Duration's limit (292
// years), so that time.Now().Add(-age) cannot wrap either.
const MaxAge = 36525 * 24 * time.Hour

// Errors ParseAge wraps, so that a caller can explain what such a value
// would have meant to it.
var (
	ErrZeroAge     = errors.New("zero")
	ErrNegativeAge = errors.New("negative")
	ErrAgeTooLong  = errors.New("more than 100 years")
)

const ageForms = "want a duration such as 90m, 36h, 30d or 2w"

// goDuration matches what time.ParseDuration reads, less the sign: one or
// more numbers, each with a unit. A string it matches that ParseDuration
// refuses can only have overflowed.
var goDuration = regexp.MustCompile(`^(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+$`)

// ParseAge reads a positive duration of at most MaxAge: a Go duration
// (90m, 36h, 1h30m) or a whole number of days or weeks (30d, 2w).
func ParseAge(s string) (time.Duration, error) {
	bad := func(why error, more string) error {
		return fmt.Errorf("%q is %w: %s", s, why, more)
	}
	if strings.HasPrefix(s, "-") {
		return 0, bad(ErrNegativeAge, ageForms)
	}
	if n, unit, ok := cutDayUnit(s); ok {
		digits := strings.TrimPrefix(n, "+")
		if digits == "" || strings.Trim(digits, "0123456789") != "" {
			return 0, fmt.Errorf("%q: %s", s, ageForms)
		}
		v, err := strconv.ParseUint(digits, 10, 64)
		switch {
		case err != nil || v > uint64(MaxAge/unit):
			// ParseUint fails on digits only when they overflow.
			return 0, bad(ErrAgeTooLong, "give at most 36525d")
		case v == 0:
			return 0, bad(ErrZeroAge, "want a positive duration")
		}
		return time.Duration(v) * unit, nil
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil && goDuration.MatchString(strings.TrimPrefix(s, "+")):
		return 0, bad(ErrAgeTooLong, "give at most 36525d")
	case err != nil:
		return 0, fmt.Errorf("%q: %s", s, ageForms)
	case d == 0:
		return 0, bad(ErrZeroAge, "want a positive duration")
	case d > MaxAge:
		return 0, bad(ErrAgeTooLong, "give at most 36525d")
	}
	return d, nil
}

// cutDayUnit splits "30d" or "2w" into the number and its unit.
func cutDayUnit(s string) (string, time.Duration, bool) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		return n, 24 * time.Hour, true
	}
	if n, ok := strings.CutSuffix(s, "w"); ok {
		return n, 7 * 24 * time.Hour, true
	}
	return "", 0, false
}

// sizeUnits are the units ParseSize knows, lower case. All are binary,
// whatever their spelling: dmsnap's sizes are chunks and file lengths,
// counted in powers of two, and "4k" has always meant 4096 here.
var sizeUnits = map[string]uint64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

const sizeForms = "want a number with an optional unit (4096, 4KiB, 1.5GiB; units B, KiB, MiB, GiB, TiB)"

// ParseSize reads a size in bytes: a whole or decimal number with an
// optional binary unit (4096, 4k, 64KiB, 1.5GiB, 2TiB). The value must be a
// whole number of bytes (1.5KiB is, 1.3KiB is not) and fit in a uint64.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	whole := len(t) - len(strings.TrimLeft(t, "0123456789"))
	if whole == 0 {
		return 0, fmt.Errorf("size %q: %s", s, sizeForms)
	}
	num, rest := t[:whole], t[whole:]
	frac := ""
	if after, ok := strings.CutPrefix(rest, "."); ok {
		n := len(after) - len(strings.TrimLeft(after, "0123456789"))
		if n == 0 {
			return 0, fmt.Errorf("size %q: no digits after the decimal point; %s", s, sizeForms)
		}
		frac, rest = after[:n], after[n:]
	}
	mult, ok := sizeUnits[strings.ToLower(strings.TrimSpace(rest))]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q; %s", s, strings.TrimSpace(rest), sizeForms)
	}
	// (whole.frac × mult) = (num·frac as an integer) × mult / 10^len(frac),
	// in exact arithmetic.
	v, _ := new(big.Int).SetString(num+frac, 10)
	v.Mul(v, new(big.Int).SetUint64(mult))
	scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil)
	q, r := new(big.Int).QuoRem(v, scale, new(big.Int))
	if r.Sign() != 0 {
		return 0, fmt.Errorf("size %q is not a whole number of bytes: give it in a smaller unit", s)
	}
	if !q.IsUint64() {
		return 0, fmt.Errorf("size %q is too large: the most is %d bytes (16 EiB less one byte)", s, uint64(math.MaxUint64))
	}
	return q.Uint64(), nil
}

// FormatBytes renders a byte count in binary units with one decimal: 512 B,
// 4.0 KiB, 1.5 GiB.
func FormatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
