package main

import (
	"crypto/sha256"
	"hash/crc32"
	"time"
)

// crcSpeed is CRC-32C (what conversion computes over every pre-image byte)
// over 256 MiB held in memory, in MB/s: the CPU's share of a conversion,
// which under software emulation is far from the hardware's.
func crcSpeed() float64 {
	buf := make([]byte, 1<<20)
	tab := crc32.MakeTable(crc32.Castagnoli)
	var c uint32
	start := time.Now()
	for i := 0; i < 256; i++ {
		c = crc32.Update(c, tab, buf)
	}
	_ = c
	return 256 * (1 << 20) / 1e6 / time.Since(start).Seconds()
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
