package devnum

import (
	"encoding/json"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDev: the number round-trips through dev_t, text and JSON; anything
// but two decimal numbers is refused.
func TestDev(t *testing.T) {
	d := Dev{Major: 259, Minor: 65536}
	if got := FromNumber(d.Number()); got != d {
		t.Errorf("FromNumber(Number()) = %v, want %v", got, d)
	}
	if got := FromNumber(unix.Mkdev(8, 17)); got != (Dev{8, 17}) {
		t.Errorf("FromNumber(8:17) = %v", got)
	}
	if p, err := Parse(d.String()); err != nil || p != d {
		t.Errorf("Parse(%q) = %v, %v", d.String(), p, err)
	}
	b, err := json.Marshal(struct{ D Dev }{d})
	if err != nil || string(b) != `{"D":"259:65536"}` {
		t.Fatalf("json: %s, %v", b, err)
	}
	var back struct{ D Dev }
	if err := json.Unmarshal(b, &back); err != nil || back.D != d {
		t.Errorf("json back: %v, %v", back.D, err)
	}
	for _, s := range []string{"", "8", "8:", ":1", "a:1", "1:b", "-1:2", "4294967296:0", "1:2:3"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
	if !(Dev{}).IsZero() || d.IsZero() {
		t.Error("IsZero")
	}
}
