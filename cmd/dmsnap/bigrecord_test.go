//go:build !vm

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/crc32c"
	"github.com/dmsnap/dmsnap/snapstore"
)

// sessionRec is one record of writeSession: size bytes of pre-image at
// sector, fill repeated (0 leaves a hole in blocks.dat: zeros).
type sessionRec struct {
	sector uint64
	size   uint32
	fill   byte
}

// writeSession writes a finished dmsnap session of device dev (devSize
// bytes, chunk bytes a chunk) holding recs, sorted, in the packed layout
// with every checksum right: what Convert writes, shaped by hand.
func writeSession(t *testing.T, dir, dev string, devSize int64, chunk uint32, recs []sessionRec) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dat, err := os.Create(filepath.Join(dir, snapstore.DataFile))
	if err != nil {
		t.Fatal(err)
	}
	defer dat.Close()
	var mrecs []snapstore.Record
	var crc []byte
	var off int64
	buf := make([]byte, 1<<20)
	for _, r := range recs {
		mrecs = append(mrecs, snapstore.Record{Sector: r.sector, Size: r.size, Offset: uint64(off)})
		for i := range buf {
			buf[i] = r.fill
		}
		var c uint32
		for n := int64(0); n < int64(r.size); n += int64(len(buf)) {
			p := buf[:min(int64(len(buf)), int64(r.size)-n)]
			c = crc32c.Update(c, p)
			if r.fill != 0 {
				if _, err := dat.WriteAt(p, off+n); err != nil {
					t.Fatal(err)
				}
			}
		}
		crc = binary.LittleEndian.AppendUint32(crc, c)
		off += int64(r.size)
	}
	if err := dat.Truncate(off); err != nil {
		t.Fatal(err)
	}
	mp := snapstore.EncodeMap(mrecs)
	hm, hc := sha256.Sum256(mp), sha256.Sum256(crc)
	meta := snapstore.Meta{Device: dev, Timestamp: 1700000000e9, BlockSize: chunk,
		TotalBlocksSaved: int64(len(recs)), SnapshotType: snapstore.SnapshotTypeCOW,
		Dmsnap: &snapstore.DmsnapMeta{FormatVersion: snapstore.MetaFormatVersion, Sequence: 1, Name: snapstore.SanitizeName(dev),
			Device: snapstore.Device{Path: dev, Size: devSize}, ChunkSize: chunk, Layout: snapstore.LayoutPacked,
			State: snapstore.StateComplete, Checksums: snapstore.Checksums{RecordCRC: snapstore.CRCAlgorithm,
				BlocksMap: hex.EncodeToString(hm[:]), BlocksCRC: hex.EncodeToString(hc[:])}}}
	mb, err := snapstore.EncodeMeta(meta)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{snapstore.MapFile: mp, snapstore.CRCFile: crc, snapstore.MetaFile: mb} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fileSum is the SHA-256 of a file's bytes.
func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestRecordOverLimitCaughtBeforeWriting: a session whose record is larger
// than a restore can write (64 MiB; here a whole 128 MiB chunk, which
// meta.json allows) is reported damaged by sessions verify, naming the
// record, and a restore through it writes nothing: neither the device nor
// an image. It used to pass verify, and the restore stopped with the
// record too large after it had written the older session's chunk.
func TestRecordOverLimitCaughtBeforeWriting(t *testing.T) {
	const big = 128 << 20
	dir := t.TempDir()
	store, state, dev := filepath.Join(dir, "store"), filepath.Join(dir, "state"), filepath.Join(dir, "dev.img")
	if err := os.WriteFile(dev, bytes.Repeat([]byte{0x55}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 2*big); err != nil {
		t.Fatal(err)
	}
	older, newer := "dev.img_1700000000", "dev.img_1700000010"
	writeSession(t, filepath.Join(store, older), dev, 2*big, 4096, []sessionRec{{0, 4096, 0xaa}})
	writeSession(t, filepath.Join(store, newer), dev, 2*big, big, []sessionRec{{big / 512, big, 0}})
	run1 := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), append([]string{"--store", store, "--state", state}, args...), strings.NewReader(""), &out, &errOut)
		return code, out.String(), errOut.String()
	}

	code, out, errOut := run1("sessions", "verify", newer)
	if code != exitFailure || !strings.Contains(out, newer+": DAMAGED") || !strings.Contains(out, "blocks.map: record 0") || !strings.Contains(out, "64 MiB") {
		t.Errorf("sessions verify: exit %d\n%s%s", code, out, errOut)
	}
	before := fileSum(t, dev)
	img := filepath.Join(dir, "out.img")
	for _, args := range [][]string{
		{"restore", dev, "--session", older, "--yes"},
		{"restore", dev, "--session", older, "--to", img},
	} {
		code, out, errOut := run1(args...)
		if code != exitFailure || !strings.Contains(errOut, newer) || !strings.Contains(errOut, "nothing was written") {
			t.Errorf("%q: exit %d\n%s%s", args, code, out, errOut)
		}
		if fileSum(t, dev) != before {
			t.Fatalf("%q changed the device", args)
		}
		if _, err := os.Stat(img); err == nil {
			t.Errorf("%q wrote %s", args, img)
		}
	}
}
