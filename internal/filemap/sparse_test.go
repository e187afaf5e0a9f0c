package filemap

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestSubtract(t *testing.T) {
	for _, tc := range []struct {
		rs, cut, want []Range
	}{
		{[]Range{{0, 100}}, nil, []Range{{0, 100}}},
		{[]Range{{0, 100}}, []Range{{0, 100}}, nil},
		{[]Range{{0, 100}}, []Range{{10, 20}, {50, 60}}, []Range{{0, 10}, {20, 50}, {60, 100}}},
		{[]Range{{0, 10}, {30, 40}}, []Range{{5, 35}}, []Range{{0, 5}, {35, 40}}},
		{[]Range{{10, 20}}, []Range{{0, 5}, {25, 30}}, []Range{{10, 20}}},
	} {
		if got := Subtract(tc.rs, tc.cut); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Subtract(%v, %v) = %v, want %v", tc.rs, tc.cut, got, tc.want)
		}
	}
}

// A tail file's data lands in the COW file at the same offsets; its zeros
// and holes do not, and the tail is gone after.
func TestFoldInto(t *testing.T) {
	dir := t.TempDir()
	dst, src := filepath.Join(dir, "cow.img"), filepath.Join(dir, "cow.tail")
	const size = 8 << 20
	base := bytes.Repeat([]byte{0xaa}, size)
	if err := os.WriteFile(dst, base, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	data := bytes.Repeat([]byte{0x5c}, 8192)
	f.WriteAt(data, 3<<20)
	f.WriteAt(make([]byte, 1<<20), 5<<20) // zeros written: they replace data
	f.Close()
	rs, err := DataRanges(mustOpen(t, src))
	if err != nil || len(rs) == 0 {
		t.Fatalf("DataRanges: %v %v", rs, err)
	}
	n, err := FoldInto(dst, src)
	if err != nil || n == 0 {
		t.Fatalf("FoldInto: %d %v", n, err)
	}
	got, _ := os.ReadFile(dst)
	want := bytes.Clone(base)
	copy(want[3<<20:], data)
	copy(want[5<<20:], make([]byte, 1<<20))
	if !bytes.Equal(got, want) {
		t.Fatal("the folded file is not the tail's data over the file")
	}
	if _, err := os.Stat(src); !os.IsNotExist(err) {
		t.Fatalf("tail left: %v", err)
	}
	if n, err := FoldInto(dst, src); err != nil || n != 0 {
		t.Fatalf("folding a missing tail: %d %v", n, err)
	}
}

func mustOpen(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
