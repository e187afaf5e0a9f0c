package names

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, ok := range []string{"sdb1", "a", "vg-lv", "x.y_z", "nvme0n1p2", "x-snapshot", "real", "x-cow", "cow1", strings.Repeat("a", MaxLen)} {
		if err := Validate(ok); err != nil {
			t.Errorf("Validate(%q): %v", ok, err)
		}
	}
	for bad, why := range map[string]string{
		"":                            "empty",
		".":                           "not allowed",
		"..":                          "not allowed",
		"a/b":                         "use only",
		"a b":                         "use only",
		"a\x00":                       "use only",
		"a+b":                         "use only", // dm accepted '+', session did not: one rule now
		"d-real":                      "ends like",
		"d-snap12":                    "ends like",
		"d-cow3":                      "ends like",
		strings.Repeat("a", MaxLen+1): "longer than",
	} {
		err := Validate(bad)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("Validate(%q) = %v, want an error saying %q", bad, err, why)
		}
	}
	// Every byte the rule allows is one snapstore.SanitizeName keeps.
	for c := 0; c < 256; c++ {
		if Byte(byte(c)) != strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", rune(c)) {
			t.Errorf("Byte(%q) = %v", byte(c), Byte(byte(c)))
		}
	}
}
