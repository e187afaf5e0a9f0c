package units

import (
	"errors"
	"math"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"
)

const day = 24 * time.Hour

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"36h":     36 * time.Hour,
		"90m":     90 * time.Minute,
		"1h30m":   90 * time.Minute,
		"1.5h":    90 * time.Minute,
		"+36h":    36 * time.Hour,
		"1ns":     1,
		"30d":     30 * day,
		"030d":    30 * day,
		"2w":      14 * day,
		"36525d":  MaxAge,
		"5217w":   5217 * 7 * day, // 36519 days
		"876600h": MaxAge,
	} {
		got, err := ParseAge(in)
		if err != nil || got != want {
			t.Errorf("ParseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, tc := range []struct {
		in   string
		want error  // nil: a malformed value
		says string // in the message
	}{
		{"106752d", ErrAgeTooLong, "more than 100 years"}, // overflowed to a negative age: prune removed everything
		{"36526d", ErrAgeTooLong, "at most 36525d"},
		{"5218w", ErrAgeTooLong, "more than 100 years"},
		{"99999999999999999999d", ErrAgeTooLong, "more than 100 years"},
		{"18446744073709551616w", ErrAgeTooLong, "more than 100 years"},
		{"876601h", ErrAgeTooLong, "more than 100 years"},
		{"2562048h", ErrAgeTooLong, "more than 100 years"},              // over time.Duration's limit
		{"9223372036854775808ns", ErrAgeTooLong, "more than 100 years"}, // 2^63
		{"0", ErrZeroAge, "positive"},
		{"0d", ErrZeroAge, "positive"},
		{"0w", ErrZeroAge, "positive"},
		{"0s", ErrZeroAge, "positive"},
		{"0.0h", ErrZeroAge, "positive"},
		{"-1h", ErrNegativeAge, "negative"},
		{"-3d", ErrNegativeAge, "negative"},
		{"-0", ErrNegativeAge, "negative"},
		{"", nil, "36h"},
		{"d", nil, "30d"},
		{"w", nil, "2w"},
		{"+d", nil, "30d"},
		{"soon", nil, "30d"},
		{"1.5d", nil, "30d"},
		{"1d12h", nil, "30d"},
		{"3 d", nil, "30d"},
		{" 3d", nil, "30d"},
		{"0x10d", nil, "30d"},
		{"1_000d", nil, "30d"},
		{"30", nil, "30d"},
		{"1y", nil, "30d"},
		{".h", nil, "30d"},
	} {
		got, err := ParseAge(tc.in)
		if err == nil {
			t.Errorf("ParseAge(%q) = %v, want an error", tc.in, got)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("ParseAge(%q): %v, want %v", tc.in, err, tc.want)
		}
		if !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), strconv.Quote(tc.in)) {
			t.Errorf("ParseAge(%q): %q, want it to quote the value and say %q", tc.in, err, tc.says)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{
		"0":                   0,
		"4096":                4096,
		"4k":                  4 << 10,
		"4KiB":                4 << 10,
		"4 KiB":               4 << 10,
		" 64kb ":              64 << 10,
		"512kib":              512 << 10,
		"1MiB":                1 << 20,
		"256MiB":              256 << 20,
		"3G":                  3 << 30,
		"2TiB":                2 << 40,
		"1.5GiB":              3 << 29,
		"1.5KiB":              1536,
		"0.5k":                512,
		"1.25MiB":             5 << 18,
		"1.50000000000000GiB": 3 << 29,
		"0.0009765625KiB":     1,
		"12B":                 12,
		"16777215.999999999068677425384521484375TiB": 1<<64 - 1<<10, // 2^64 - 1 KiB
		"18446744073709551615":                       math.MaxUint64,
		"16777215TiB":                                16777215 << 40,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, says := range map[string]string{
		"":                             "want a number",
		"KiB":                          "want a number",
		"-4k":                          "want a number",
		".5k":                          "want a number",
		"4 parsecs":                    "unknown unit",
		"4PiB":                         "unknown unit",
		"1.3KiB":                       "not a whole number of bytes",
		"0.1":                          "not a whole number of bytes",
		"1.":                           "no digits after the decimal point",
		"1.k":                          "no digits after the decimal point",
		"1.5.5k":                       "unknown unit",
		"18446744073709551616":         "too large",
		"99999999999999999999":         "too large",
		"16777216TiB":                  "too large",
		"16777215.9999999999999999TiB": "not a whole number", // neither whole nor small
		"17179869184GiB":               "too large",
	} {
		got, err := ParseSize(in)
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseSize(%q) = %d, %v; want an error saying %q", in, got, err, says)
		}
	}
}

func FuzzParseAge(f *testing.F) {
	for _, s := range []string{"36h", "30d", "2w", "106752d", "0", "-1h", "1h30m", "36525d", "876601h", "9223372036854775807ns", "1.5h", "+3d", "µs"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseAge(s)
		if err != nil {
			if d != 0 {
				t.Fatalf("ParseAge(%q) = %v with error %v", s, d, err)
			}
			return
		}
		if d <= 0 || d > MaxAge {
			t.Fatalf("ParseAge(%q) = %v, outside (0, %v]", s, d, MaxAge)
		}
		// What it accepts, written back as Go writes durations, reads the
		// same; and so does a whole number of days or weeks.
		if back, err := ParseAge(d.String()); err != nil || back != d {
			t.Fatalf("ParseAge(%q) = %v; ParseAge(%q) = %v, %v", s, d, d.String(), back, err)
		}
		if n, unit, ok := cutDayUnit(s); ok {
			v, perr := strconv.ParseUint(strings.TrimPrefix(n, "+"), 10, 64)
			if perr != nil || time.Duration(v)*unit != d {
				t.Fatalf("ParseAge(%q) = %v, want %s × %v", s, d, n, unit)
			}
		}
	})
}

// FuzzParseAgeExact checks ParseAge against exact arithmetic on the Go
// durations it reads: an accepted value is the exact one, and one refused
// as too long is more than MaxAge, never a malformed one. Both within what
// time.ParseDuration loses: it drops the part of a nanosecond of each
// number and scales a fraction in float64 ("0.00000007h" is 251999ns).
func FuzzParseAgeExact(f *testing.F) {
	for _, s := range []string{"36h", "876600h", "876600.0000000001h", "876601h", "9223372036854775808ns", "2562048h", "1.5ns", "1h30m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		exact, parts := exactGoDuration(s)
		if exact == nil {
			return
		}
		d, err := ParseAge(s)
		// ParseDuration's error: under a nanosecond a number, and 2^-50 of
		// the value for the float64 scaling.
		tol := new(big.Rat).Mul(exact, big.NewRat(1, 1<<50))
		tol.Add(tol, big.NewRat(int64(parts), 1))
		lo, hi := new(big.Rat).Sub(exact, tol), new(big.Rat).Add(exact, tol)
		rat := func(d time.Duration) *big.Rat { return new(big.Rat).SetInt64(int64(d)) }
		switch {
		case err == nil:
			if rat(d).Cmp(lo) < 0 || rat(d).Cmp(hi) > 0 {
				t.Fatalf("ParseAge(%q) = %d ns, exactly %s", s, d, exact.FloatString(3))
			}
		case errors.Is(err, ErrAgeTooLong):
			if hi.Cmp(rat(MaxAge)) <= 0 {
				t.Fatalf("ParseAge(%q): %v, but it is %s ns", s, err, exact.FloatString(3))
			}
		case errors.Is(err, ErrZeroAge):
			if lo.Cmp(rat(1)) >= 0 {
				t.Fatalf("ParseAge(%q): %v, but it is %s ns", s, err, exact.FloatString(3))
			}
		default:
			t.Fatalf("ParseAge(%q): %v, for a well-formed duration", s, err)
		}
	})
}

// exactGoDuration reads a duration in time.ParseDuration's syntax, without
// a sign, into nanoseconds as an exact rational, with the count of its
// numbers; nil when s is not one.
func exactGoDuration(s string) (*big.Rat, int) {
	units := map[string]int64{"ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}
	s = strings.TrimPrefix(s, "+")
	sum, parts := new(big.Rat), 0
	for s != "" {
		i := len(s) - len(strings.TrimLeft(s, "0123456789."))
		num := s[:i]
		if strings.Count(num, ".") > 1 || strings.Trim(num, ".") == "" {
			return nil, 0
		}
		j := len(s[i:]) - len(strings.TrimLeft(s[i:], "nsuµμmh"))
		unit, ok := units[s[i:i+j]]
		if !ok {
			return nil, 0
		}
		r, ok := new(big.Rat).SetString(strings.TrimSuffix(num, "."))
		if !ok {
			return nil, 0
		}
		sum.Add(sum, r.Mul(r, new(big.Rat).SetInt64(unit)))
		parts++
		s = s[i+j:]
	}
	if parts == 0 {
		return nil, 0
	}
	return sum, parts
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4096", "4KiB", "1.5GiB", "2TiB", "0", "1.3KiB", "18446744073709551615", "18446744073709551616", "16777216TiB", " 4 k ", "0.0009765625KiB", "030k"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if n != 0 {
				t.Fatalf("ParseSize(%q) = %d with error %v", s, n, err)
			}
			return
		}
		if back, err := ParseSize(strconv.FormatUint(n, 10)); err != nil || back != n {
			t.Fatalf("ParseSize(%q) = %d; in bytes it reads %d, %v", s, n, back, err)
		}
		// An independent reading of the same string, in exact rational
		// arithmetic: the number times the unit.
		t2 := strings.TrimSpace(s)
		i := len(strings.TrimRight(t2, "bBiIkKmMgGtT \t\n\v\f\r"))
		r, ok := new(big.Rat).SetString(t2[:i])
		if !ok {
			t.Fatalf("ParseSize(%q) = %d, but %q is not a number", s, n, t2[:i])
		}
		r.Mul(r, new(big.Rat).SetInt64(int64(sizeUnits[strings.ToLower(strings.TrimSpace(t2[i:]))])))
		if !r.IsInt() || !r.Num().IsUint64() || r.Num().Uint64() != n {
			t.Fatalf("ParseSize(%q) = %d, want %s", s, n, r.RatString())
		}
	})
}

// One library prints sizes as it parses them: in binary units, TiB included.
func TestFormatBytes(t *testing.T) {
	cases := map[uint64]string{
		0:             "0 B",
		512:           "512 B",
		1023:          "1023 B",
		1024:          "1.0 KiB",
		1536:          "1.5 KiB",
		64 << 20:      "64.0 MiB",
		1<<30 + 1<<29: "1.5 GiB",
		3 << 40:       "3.0 TiB",
		1<<64 - 1:     "16.0 EiB",
		1<<20 - 1:     "1024.0 KiB",
	}
	for n, want := range cases {
		// What is printed is read back, to the precision printed.
		if back, err := ParseSize(want); n <= 1<<50 && (err != nil || n >= 1024 && (back > n+n/100 || back < n-n/100)) {
			t.Errorf("ParseSize(%q) = %d, %v; printed for %d", want, back, err, n)
		}
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
