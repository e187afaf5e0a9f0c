package session

import (
	"testing"
	"time"
)

// Bytes pruned for min-free count as freed until the store shows them, for
// a minute at most, so the check a second later removes no more for the
// same shortfall.
func TestFreeingStores(t *testing.T) {
	f := &freeingStores{m: map[string]freeingRecord{}}
	t0 := time.Unix(1700000000, 0)
	f.add("/s", 100, t0)
	f.add("/s", 50, t0.Add(time.Second))
	if got := f.pending("/s", t0.Add(2*time.Second)); got != 150 {
		t.Fatalf("pending %d, want 150", got)
	}
	if got := f.pending("/other", t0); got != 0 {
		t.Fatalf("another store: %d", got)
	}
	if got := f.pending("/s", t0.Add(2*freeingWindow)); got != 0 {
		t.Fatalf("after the window: %d", got)
	}
	f.add("/s", 10, t0)
	f.clear("/s")
	if got := f.pending("/s", t0); got != 0 {
		t.Fatalf("after clear: %d", got)
	}
}
