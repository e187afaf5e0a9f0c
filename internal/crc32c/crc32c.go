// Package crc32c computes CRC-32C (Castagnoli), the checksum dmsnap keeps
// for every pre-image, with whichever of two implementations is faster on
// the CPU it runs on.
//
// hash/crc32 uses the CPU's CRC32 instruction where there is one: about
// 20 GB/s on hardware. Under software emulation (QEMU's TCG, which is
// where dmsnap's VM suite and benchmarks run) that instruction is a helper
// call per 8 bytes and runs at about 125 MB/s, while a table-driven
// slicing-by-8 loop, plain loads and XORs that the emulator translates
// well, runs at about 420 MB/s. Conversion and restore checksum every byte
// they move, so the slower one makes them CPU-bound. The choice is made
// once, by timing both over the same buffer, and never changes the result.
package crc32c

import (
	"hash/crc32"
	"sync"
	"time"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// slicing8 holds the eight tables of the slicing-by-8 method: slicing8[0]
// is the byte-at-a-time table, slicing8[k][b] the CRC of byte b followed
// by k zero bytes.
var slicing8 = func() *[8][256]uint32 {
	var t [8][256]uint32
	t[0] = *castagnoli
	for i := range 256 {
		c := t[0][i]
		for k := 1; k < 8; k++ {
			c = t[0][c&0xff] ^ c>>8
			t[k][i] = c
		}
	}
	return &t
}()

// Impl names an implementation.
type Impl string

const (
	Stdlib Impl = "hash/crc32" // the CPU's CRC32 instruction where there is one
	Table  Impl = "slicing-by-8"
)

var (
	chooseOnce sync.Once
	chosen     func(uint32, []byte) uint32
	chosenName Impl
)

func stdlibUpdate(crc uint32, p []byte) uint32 { return crc32.Update(crc, castagnoli, p) }

// tableUpdate is CRC-32C by slicing-by-8, equal to crc32.Update(crc,
// castagnoli, p) for every input.
func tableUpdate(crc uint32, p []byte) uint32 {
	t := slicing8
	crc = ^crc
	for len(p) >= 8 {
		crc ^= uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24
		crc = t[0][p[7]] ^ t[1][p[6]] ^ t[2][p[5]] ^ t[3][p[4]] ^
			t[4][crc>>24] ^ t[5][crc>>16&0xff] ^ t[6][crc>>8&0xff] ^ t[7][crc&0xff]
		p = p[8:]
	}
	for _, b := range p {
		crc = t[0][byte(crc)^b] ^ crc>>8
	}
	return ^crc
}

// choose times both implementations over the same 128 KiB (after a
// warm-up, so an emulator's code translation is not counted) and keeps the
// faster; the best of three runs each.
func choose() {
	buf := make([]byte, 128<<10)
	for i := range buf {
		buf[i] = byte(i*131 + i>>8)
	}
	best := func(f func(uint32, []byte) uint32) time.Duration {
		f(0, buf[:4096])
		d := time.Duration(1<<63 - 1)
		for range 3 {
			start := time.Now()
			f(0, buf)
			d = min(d, time.Since(start))
		}
		return d
	}
	if best(tableUpdate) < best(stdlibUpdate) {
		chosen, chosenName = tableUpdate, Table
	} else {
		chosen, chosenName = stdlibUpdate, Stdlib
	}
}

// Update returns the CRC-32C of p appended to data whose CRC-32C is crc
// (as crc32.Update with the Castagnoli table).
func Update(crc uint32, p []byte) uint32 {
	chooseOnce.Do(choose)
	return chosen(crc, p)
}

// Checksum is the CRC-32C of p.
func Checksum(p []byte) uint32 { return Update(0, p) }

// Chosen names the implementation Update uses on this machine.
func Chosen() Impl {
	chooseOnce.Do(choose)
	return chosenName
}
