//go:build !vm

package dm

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The hand-written offsets must match the kernel struct layout as x/sys
// declares it.
func TestLayoutMatchesKernelStructs(t *testing.T) {
	var h unix.DmIoctl
	var s unix.DmTargetSpec
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof dm_ioctl", headerSize, unsafe.Sizeof(h)},
		{"data_size", offDataSize, unsafe.Offsetof(h.Data_size)},
		{"data_start", offDataStart, unsafe.Offsetof(h.Data_start)},
		{"target_count", offTargetCnt, unsafe.Offsetof(h.Target_count)},
		{"open_count", offOpenCount, unsafe.Offsetof(h.Open_count)},
		{"flags", offFlags, unsafe.Offsetof(h.Flags)},
		{"event_nr", offEventNr, unsafe.Offsetof(h.Event_nr)},
		{"dev", offDev, unsafe.Offsetof(h.Dev)},
		{"name", offName, unsafe.Offsetof(h.Name)},
		{"uuid", offUUID, unsafe.Offsetof(h.Uuid)},
		{"sizeof dm_target_spec", specSize, unsafe.Sizeof(s)},
		{"sector_start", specOffStart, unsafe.Offsetof(s.Sector_start)},
		{"length", specOffLength, unsafe.Offsetof(s.Length)},
		{"status", specOffStatus, unsafe.Offsetof(s.Status)},
		{"next", specOffNext, unsafe.Offsetof(s.Next)},
		{"target_type", specOffType, unsafe.Offsetof(s.Target_type)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: we use %d, kernel struct has %d", c.name, c.got, c.want)
		}
	}
	if bufferFullFlag != unix.DM_BUFFER_FULL_FLAG {
		t.Errorf("bufferFullFlag = %#x, want %#x", bufferFullFlag, unix.DM_BUFFER_FULL_FLAG)
	}
}

var le = binary.LittleEndian // amd64 and arm64 hosts; the tests build bytes by hand

func TestEncodeTableLoadBytes(t *testing.T) {
	specs := []TargetSpec{
		{Start: 0, Length: 2048, Type: "linear", Params: "7:0 0"},              // 5 bytes + NUL -> 40+6 -> 48
		{Start: 2048, Length: 1024, Type: "snapshot", Params: "253:0 7:1 P 8"}, // 13 + 1 -> 54 -> 56
		{Start: 3072, Length: 8, Type: "snapshot-origin", Params: "253:0"},     // 5 + 1 -> 46 -> 48
	}
	buf, err := encodeTableLoad("dmsnap-x", unix.DM_READONLY_FLAG, specs)
	if err != nil {
		t.Fatal(err)
	}
	if want := 312 + 48 + 56 + 48; len(buf) != want {
		t.Fatalf("buffer is %d bytes, want %d", len(buf), want)
	}
	if len(buf)%8 != 0 {
		t.Errorf("buffer size %d is not a multiple of 8", len(buf))
	}
	// Header.
	for i, v := range []uint32{4, 0, 0} {
		if got := le.Uint32(buf[4*i:]); got != v {
			t.Errorf("version[%d] = %d, want %d", i, got, v)
		}
	}
	if got := le.Uint32(buf[12:]); got != uint32(len(buf)) {
		t.Errorf("data_size = %d, want %d", got, len(buf))
	}
	if got := le.Uint32(buf[16:]); got != 312 {
		t.Errorf("data_start = %d, want 312", got)
	}
	if got := le.Uint32(buf[20:]); got != 3 {
		t.Errorf("target_count = %d, want 3", got)
	}
	if got := le.Uint32(buf[28:]); got != unix.DM_READONLY_FLAG {
		t.Errorf("flags = %#x, want %#x", got, unix.DM_READONLY_FLAG)
	}
	if got := buf[48 : 48+9]; !bytes.Equal(got, []byte("dmsnap-x\x00")) {
		t.Errorf("name field = %q", got)
	}
	// Specs: next is relative to the spec it is in.
	type want struct {
		off           int
		start, length uint64
		next          uint32
		typ, params   string
	}
	for i, w := range []want{
		{312, 0, 2048, 48, "linear", "7:0 0"},
		{360, 2048, 1024, 56, "snapshot", "253:0 7:1 P 8"},
		{416, 3072, 8, 48, "snapshot-origin", "253:0"},
	} {
		p := buf[w.off:]
		if got := le.Uint64(p[0:]); got != w.start {
			t.Errorf("spec %d sector_start = %d, want %d", i, got, w.start)
		}
		if got := le.Uint64(p[8:]); got != w.length {
			t.Errorf("spec %d length = %d, want %d", i, got, w.length)
		}
		if got := le.Uint32(p[16:]); got != 0 {
			t.Errorf("spec %d status = %d, want 0", i, got)
		}
		if got := le.Uint32(p[20:]); got != w.next {
			t.Errorf("spec %d next = %d, want %d", i, got, w.next)
		}
		typ := make([]byte, 16)
		copy(typ, w.typ)
		if !bytes.Equal(p[24:40], typ) {
			t.Errorf("spec %d target_type = %q, want %q NUL-padded", i, p[24:40], w.typ)
		}
		str := p[40:w.next]
		wantStr := make([]byte, int(w.next)-40)
		copy(wantStr, w.params)
		if !bytes.Equal(str, wantStr) {
			t.Errorf("spec %d params = %q, want %q NUL-padded", i, str, wantStr)
		}
	}
}

func TestEncodeTableLoadRejects(t *testing.T) {
	good := TargetSpec{Length: 8, Type: "linear", Params: "7:0 0"}
	cases := map[string]struct {
		name  string
		specs []TargetSpec
		want  string
	}{
		"no targets":   {"x", nil, "no targets"},
		"empty name":   {"", []TargetSpec{good}, "empty device name"},
		"slash":        {"a/b", []TargetSpec{good}, "contains '/'"},
		"long name":    {strings.Repeat("n", 128), []TargetSpec{good}, "longer than 127"},
		"long type":    {"x", []TargetSpec{{Length: 8, Type: "a-very-long-type", Params: ""}}, "longer than 15"},
		"zero length":  {"x", []TargetSpec{{Type: "linear", Params: "7:0 0"}}, "zero length"},
		"NUL in param": {"x", []TargetSpec{{Length: 8, Type: "linear", Params: "7:0\x000"}}, "NUL"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := encodeTableLoad(c.name, 0, c.specs)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

// statusReply builds a DM_TABLE_STATUS reply by hand as the kernel lays it
// out (dm-ioctl.c retrieve_status): specs from data_start, each string
// NUL-terminated, next relative to the first spec and 8-byte aligned,
// data_size = end of the last string.
func buildStatusReply(t *testing.T, size int, flags uint32, specs []TargetSpec) []byte {
	t.Helper()
	buf := make([]byte, size)
	le.PutUint32(buf[0:], 4)
	le.PutUint32(buf[4:], 48)
	le.PutUint32(buf[16:], 312)
	le.PutUint32(buf[20:], uint32(len(specs)))
	le.PutUint32(buf[28:], flags)
	le.PutUint64(buf[40:], unix.Mkdev(253, 4))
	copy(buf[48:], "dmsnap-x-snap1")
	rel := 0
	used := 312
	for _, s := range specs {
		p := buf[312+rel:]
		le.PutUint64(p[0:], s.Start)
		le.PutUint64(p[8:], s.Length)
		copy(p[24:40], s.Type)
		copy(p[40:], s.Params)
		end := rel + 40 + len(s.Params) + 1
		used = 312 + end
		rel = (end + 7) &^ 7
		le.PutUint32(p[20:], uint32(rel))
	}
	le.PutUint32(buf[12:], uint32(used))
	// Garbage after the reply must not be read.
	for i := used; i < len(buf); i++ {
		buf[i] = 0xAA
	}
	return buf
}

func TestDecodeStatusReply(t *testing.T) {
	want := []TargetSpec{
		{Start: 0, Length: 131072, Type: "snapshot", Params: "16/163840 16"},
		{Start: 131072, Length: 8, Type: "snapshot-origin", Params: ""},
		{Start: 131080, Length: 16, Type: "linear", Params: "7:0 2048"},
	}
	buf := buildStatusReply(t, 4096, 0, want)
	r, err := decodeStatusReply(buf)
	if err != nil {
		t.Fatal(err)
	}
	if r.Full {
		t.Fatal("Full set on a complete reply")
	}
	if r.Header.Name != "dmsnap-x-snap1" || DevFromNumber(r.Header.Dev) != (Dev{Major: 253, Minor: 4}) {
		t.Errorf("header name %q dev %v", r.Header.Name, DevFromNumber(r.Header.Dev))
	}
	if len(r.Specs) != len(want) {
		t.Fatalf("got %d specs, want %d: %+v", len(r.Specs), len(want), r.Specs)
	}
	for i := range want {
		if r.Specs[i] != want[i] {
			t.Errorf("spec %d = %+v, want %+v", i, r.Specs[i], want[i])
		}
	}
}

// The kernel's next in a status reply is relative to the first spec. A
// decoder that took it relative to the current spec would land on the
// second spec's middle here; pin the difference with offsets by hand.
func TestDecodeStatusReplyNextIsRelativeToFirstSpec(t *testing.T) {
	buf := make([]byte, 1024)
	le.PutUint32(buf[0:], 4)
	le.PutUint32(buf[16:], 312)
	le.PutUint32(buf[20:], 2)
	// spec 0 at data offset 0: "a" -> string ends at 42, next = 48
	p := buf[312:]
	le.PutUint64(p[8:], 8)
	copy(p[24:], "zero")
	copy(p[40:], "a")
	le.PutUint32(p[20:], 48)
	// spec 1 at data offset 48: next relative to first spec would be 48+.. ;
	// status "bb" ends at 48+40+3 = 91, next = 96 (from the first spec).
	p = buf[312+48:]
	le.PutUint64(p[0:], 8)
	le.PutUint64(p[8:], 8)
	copy(p[24:], "error")
	copy(p[40:], "bb")
	le.PutUint32(p[20:], 96)
	le.PutUint32(buf[12:], 312+91)

	r, err := decodeStatusReply(buf)
	if err != nil {
		t.Fatal(err)
	}
	want := []TargetSpec{{0, 8, "zero", "a"}, {8, 8, "error", "bb"}}
	if len(r.Specs) != 2 || r.Specs[0] != want[0] || r.Specs[1] != want[1] {
		t.Fatalf("specs = %+v, want %+v", r.Specs, want)
	}
}

func TestDecodeStatusReplyBufferFull(t *testing.T) {
	buf := buildStatusReply(t, 1024, unix.DM_BUFFER_FULL_FLAG, []TargetSpec{{Length: 8, Type: "linear", Params: "7:0 0"}})
	r, err := decodeStatusReply(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Full || r.Specs != nil {
		t.Fatalf("Full=%v specs=%v, want Full and no specs", r.Full, r.Specs)
	}
}

func TestDecodeStatusReplyNoTable(t *testing.T) {
	buf := buildStatusReply(t, 1024, 0, nil)
	r, err := decodeStatusReply(buf)
	if err != nil || len(r.Specs) != 0 {
		t.Fatalf("specs=%v err=%v, want none", r.Specs, err)
	}
}

func TestDecodeStatusReplyMalformed(t *testing.T) {
	one := []TargetSpec{{Length: 8, Type: "linear", Params: "7:0 0"}}
	cases := map[string]struct {
		mutate func([]byte)
		want   string
	}{
		"short buffer":          {func(b []byte) {}, "need at least 312"},
		"data_size past buffer": {func(b []byte) { le.PutUint32(b[12:], 5000) }, "outside"},
		"count exceeds data":    {func(b []byte) { le.PutUint32(b[20:], 2) }, "target 1"},
		"no NUL":                {func(b []byte) { le.PutUint32(b[12:], 312+42) }, "not NUL-terminated"},
		"next backwards": {func(b []byte) {
			le.PutUint32(b[20:], 2)
			le.PutUint32(b[312+20:], 0)
		}, "does not move forward"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			buf := buildStatusReply(t, 1024, 0, one)
			c.mutate(buf)
			if name == "short buffer" {
				buf = buf[:100]
			}
			_, err := decodeStatusReply(buf)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestEncodeRequest(t *testing.T) {
	buf, err := encodeRequest("dmsnap-a", unix.DM_STATUS_TABLE_FLAG, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(buf) != 1000 {
		t.Fatalf("len = %d, want 1000 (8-aligned)", len(buf))
	}
	h, err := decodeHeader(buf)
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != [3]uint32{4, 0, 0} || h.DataSize != 1000 || h.DataStart != 312 ||
		h.Flags != unix.DM_STATUS_TABLE_FLAG || h.Name != "dmsnap-a" || h.TargetCount != 0 {
		t.Fatalf("header = %+v", h)
	}
	small, err := encodeRequest("x", 0, 10)
	if err != nil || len(small) != headerSize {
		t.Fatalf("small request: len %d err %v, want %d", len(small), err, headerSize)
	}
}
