// Package fsprobe recognises a filesystem by its superblock and reads its
// UUID, as blkid does for the few filesystems dmsnap knows, without udev or
// blkid.
package fsprobe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Superblock positions (byte offsets from the start of the device).
const (
	extSuperblock   = 1024 // ext2/3/4: struct ext4_super_block
	extMagicOff     = 0x38 // s_magic, le16
	extCompatOff    = 0x5c // s_feature_compat, le32
	extIncompatOff  = 0x60 // s_feature_incompat, le32
	extUUIDOff      = 0x68 // s_uuid[16]
	extMagic        = 0xef53
	extHasJournal   = 0x4     // COMPAT_HAS_JOURNAL
	extIncompatExt4 = 0x2c0   // INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG
	xfsUUIDOff      = 32      // sb_uuid, after magic, blocksize, dblocks, rblocks, rextents
	btrfsSuperblock = 0x10000 // the primary super block, 64 KiB in
	btrfsFSIDOff    = 0x20    // fsid[16], after csum[32]
	btrfsMagicOff   = 0x40    // "_BHRfS_M"
)

// Probe recognises ext2, ext3, ext4, XFS and btrfs by their
// superblocks and returns the type and the UUID (lowercase, 8-4-4-4-12, as
// blkid prints it). Anything else — no filesystem, or one not recognised —
// is "", "" and no error; only a read error is an error.
func Probe(r io.ReaderAt) (fsType, uuid string, err error) {
	read := func(off int64, n int) ([]byte, error) {
		b := make([]byte, n)
		k, err := r.ReadAt(b, off)
		if k == n {
			return b, nil
		}
		if errors.Is(err, io.EOF) || err == nil {
			return nil, nil // the device is too small to hold this superblock
		}
		return nil, fmt.Errorf("read superblock at %d: %w", off, err)
	}

	b, err := read(0, 64)
	if err != nil {
		return "", "", err
	}
	if b != nil && string(b[:4]) == "XFSB" {
		return "xfs", formatUUID(b[xfsUUIDOff : xfsUUIDOff+16]), nil
	}
	b, err = read(extSuperblock, 0x80)
	if err != nil {
		return "", "", err
	}
	if b != nil && binary.LittleEndian.Uint16(b[extMagicOff:]) == extMagic {
		typ := "ext2"
		switch {
		case binary.LittleEndian.Uint32(b[extIncompatOff:])&extIncompatExt4 != 0:
			typ = "ext4"
		case binary.LittleEndian.Uint32(b[extCompatOff:])&extHasJournal != 0:
			typ = "ext3"
		}
		return typ, formatUUID(b[extUUIDOff : extUUIDOff+16]), nil
	}
	b, err = read(btrfsSuperblock, 0x48)
	if err != nil {
		return "", "", err
	}
	if b != nil && string(b[btrfsMagicOff:btrfsMagicOff+8]) == "_BHRfS_M" {
		return "btrfs", formatUUID(b[btrfsFSIDOff : btrfsFSIDOff+16]), nil
	}
	return "", "", nil
}

func formatUUID(b []byte) string {
	if bytes.Equal(b, make([]byte, 16)) {
		return ""
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
