package main

import (
	"crypto/sha256"
	"hash/crc32"
	"time"

	"github.com/dmsnap/dmsnap/internal/crc32c"
)

// crcSpeed is CRC-32C (what conversion and restore compute over every
// pre-image byte) over 256 MiB held in memory, in MB/s: the CPU's share of
// a conversion, which under software emulation is far from the hardware's.
// It times dmsnap's (internal/crc32c, as chosen on this machine) and
// hash/crc32's (the CPU's CRC32 instruction).
func crcSpeed() (dmsnap, stdlib float64) {
	buf := make([]byte, 1<<20)
	tab := crc32.MakeTable(crc32.Castagnoli)
	speed := func(f func(uint32, []byte) uint32) float64 {
		var c uint32
		start := time.Now()
		for i := 0; i < 256; i++ {
			c = f(c, buf)
		}
		_ = c
		return 256 * (1 << 20) / 1e6 / time.Since(start).Seconds()
	}
	return speed(crc32c.Update), speed(func(c uint32, p []byte) uint32 { return crc32.Update(c, tab, p) })
}

// shaSpeed is SHA-256 over 64 MiB in memory, in MB/s.
func shaSpeed() float64 {
	buf := make([]byte, 1<<20)
	h := sha256.New()
	start := time.Now()
	for i := 0; i < 64; i++ {
		h.Write(buf)
	}
	h.Sum(nil)
	return 64 * (1 << 20) / 1e6 / time.Since(start).Seconds()
}
