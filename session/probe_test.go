package session

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestSystemProberRefusesNonBlockDevice(t *testing.T) {
	f := filepath.Join(t.TempDir(), "img")
	os.WriteFile(f, make([]byte, 4096), 0o644)
	if _, err := (SystemProber{}).Identify(context.Background(), f); err == nil {
		t.Fatal("a regular file was identified as a block device")
	}
	if _, err := (SystemProber{}).Identify(context.Background(), "/nonexistent"); err == nil {
		t.Fatal("a missing path was identified")
	}
}
