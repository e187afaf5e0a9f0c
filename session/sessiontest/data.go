package sessiontest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// ModelData makes the fakes keep a device's data as the kernel and
// snapstore do, so that what a session recorded can be restored: the
// device is a regular file (the path given to StackUp and the Prober),
// written directly in place of the origin; a snapshot keeps the pre-images
// of the chunks that changed in that file while it lived (found when it is
// removed, against a copy taken when it was attached); Convert writes
// them as a real session of the store (blocks.dat, packed; blocks.map;
// blocks.crc; a checksummed meta.json), which package restore reads like
// any other. Call it before anything is activated.
func (s *System) ModelData() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data = &dataModel{}
}

type dataModel struct {
	kept []keptSnapshot
}

// keptSnapshot is what a removed snapshot recorded, until its session is
// converted: the kernel's COW file, as a loop device holds it (the file,
// whatever its path now).
type keptSnapshot struct {
	file  os.FileInfo
	chunk int
	pre   map[int][]byte // chunk number → pre-image
}

// keepLocked records the pre-images of snapshot sn of the device at path.
func (d *dataModel) keepLocked(path string, sn *snap) error {
	now, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if len(now) != len(sn.base) {
		return fmt.Errorf("%s changed size under its snapshot (%d → %d bytes)", path, len(sn.base), len(now))
	}
	k := keptSnapshot{file: sn.file, chunk: sn.chunk, pre: map[int][]byte{}}
	for off := 0; off < len(now); off += sn.chunk {
		end := min(off+sn.chunk, len(now))
		if !bytes.Equal(now[off:end], sn.base[off:end]) {
			k.pre[off/sn.chunk] = bytes.Clone(sn.base[off:end])
		}
	}
	d.kept = append(d.kept, k)
	return nil
}

// convertLocked writes the session in dir (state st) as a real one.
func (d *dataModel) convertLocked(dir string, st State) error {
	cow := filepath.Join(dir, COWFile)
	fi, err := os.Stat(cow)
	if err != nil {
		return fmt.Errorf("convert %s: %w", dir, err)
	}
	i := slices.IndexFunc(d.kept, func(k keptSnapshot) bool { return os.SameFile(k.file, fi) })
	var k keptSnapshot
	if i >= 0 {
		k = d.kept[i]
	} else if st.Phase != session.SessionInvalid && cowUsed(cow) {
		return fmt.Errorf("convert %s: the model kept nothing of its snapshot", dir)
	}
	chunks := make([]int, 0, len(k.pre))
	for c := range k.pre {
		chunks = append(chunks, c)
	}
	slices.Sort(chunks)
	var dat, crc []byte
	var recs []snapstore.Record
	for _, c := range chunks {
		pre := k.pre[c]
		recs = append(recs, snapstore.Record{Sector: uint64(c * k.chunk / snapstore.SectorSize), Size: uint32(len(pre)), Offset: uint64(len(dat))})
		dat = append(dat, pre...)
		crc = binary.LittleEndian.AppendUint32(crc, snapstore.ChecksumData(pre))
	}
	mp := snapstore.EncodeMap(recs)
	hm, hc := sha256.Sum256(mp), sha256.Sum256(crc)
	when := st.Mounted
	if when.IsZero() {
		when = st.Armed
	}
	state, reason := snapstore.StateComplete, ""
	if st.Phase == session.SessionInvalid {
		state, reason = snapstore.StateInvalid, st.InvalidReason
	}
	meta := snapstore.Meta{Device: st.DevicePath, Timestamp: when.UnixNano(), BlockSize: st.ChunkSize, FsType: st.FSType,
		TotalBlocksSaved: int64(len(recs)), SnapshotType: snapstore.SnapshotTypeCOW,
		Dmsnap: &snapstore.DmsnapMeta{FormatVersion: snapstore.MetaFormatVersion, Name: st.Name, Sequence: st.Sequence,
			Device: snapstore.Device{Path: st.DevicePath, Size: int64(st.DeviceSize)}, ChunkSize: st.ChunkSize,
			Layout: snapstore.LayoutPacked, Times: snapstore.Times{Armed: st.Armed, Mounted: st.Mounted, Unmounted: st.Unmounted},
			State: state, InvalidReason: reason,
			Checksums: snapstore.Checksums{RecordCRC: snapstore.CRCAlgorithm,
				BlocksMap: hex.EncodeToString(hm[:]), BlocksCRC: hex.EncodeToString(hc[:])}}}
	mb, err := snapstore.EncodeMeta(meta)
	if err != nil {
		return err
	}
	for name, b := range map[string][]byte{snapstore.DataFile: dat, snapstore.MapFile: mp, snapstore.CRCFile: crc} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	// meta.json commits the session, as in snapstore.Convert.
	if err := os.WriteFile(filepath.Join(dir, snapstore.MetaFile), mb, 0o644); err != nil {
		return err
	}
	if i >= 0 {
		d.kept = slices.Delete(d.kept, i, i+1)
	}
	if err := os.Remove(cow); err != nil {
		return err
	}
	return rmState(dir)
}
