//go:build !vm

package snapstore

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCowUsed: a session's COW counts as used once the kernel wrote its
// header, in cow.img or (its start not mapped) in cow.tail, or once
// conversion has begun (blocks.dat); zeros and missing files do not.
func TestCowUsed(t *testing.T) {
	write := func(t *testing.T, dir, name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	zeros := make([]byte, 8192)
	header := append([]byte("SnAp"), make([]byte, 8188)...)
	for _, c := range []struct {
		name  string
		files map[string][]byte
		want  bool
	}{
		{"nothing", nil, false},
		{"zeros", map[string][]byte{CowFile: zeros}, false},
		{"zeros and a zero tail", map[string][]byte{CowFile: zeros, CowTailFile: zeros}, false},
		{"header in cow.img", map[string][]byte{CowFile: header}, true},
		{"header in the tail", map[string][]byte{CowFile: zeros, CowTailFile: header}, true},
		{"conversion begun", map[string][]byte{DataFile: nil}, true},
		{"shorter than a header", map[string][]byte{CowFile: []byte("Sn")}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, b := range c.files {
				write(t, dir, n, b)
			}
			got, err := CowUsed(dir)
			if err != nil || got != c.want {
				t.Fatalf("CowUsed = %v, %v; want %v", got, err, c.want)
			}
		})
	}
}
