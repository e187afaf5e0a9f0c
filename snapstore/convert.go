package snapstore

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/dmsnap/dmsnap/internal/crc32c"
	"github.com/dmsnap/dmsnap/internal/directio"
	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"
)

// Conversion steps, in order (FORMAT.md, "Conversion"). ConvertOptions.AfterStep
// is called after each one that ran; returning an error there stops Convert
// as a crash would.
const (
	StepBegin   = "begin"     // state.json: closing time and layout chosen
	StepFiles   = "map-files" // blocks.crc and blocks.map (and packed blocks.dat) durable
	StepMap     = "map"       // state.json: conversion checkpoint recorded
	StepData    = "data"      // cow.img renamed to blocks.dat (packed: cow.img removed)
	StepPunch   = "punch"     // blocks.dat cut to its last record, header and metadata chunks punched out
	StepMeta    = "meta"      // meta.json committed
	StepCleanup = "cleanup"   // state.json removed
)

// ConvertSteps lists the steps in the order Convert runs them.
var ConvertSteps = []string{StepBegin, StepFiles, StepMap, StepData, StepPunch, StepMeta, StepCleanup}

// convReadBlock bounds one read of the data pass; convReadAhead is how many
// such reads the cow-layout data pass holds (in flight or being checksummed).
const (
	convReadBlock  = 1 << 20
	convReadAhead  = 6
	convCRCWorkers = 2
)

// ConvertOptions tunes Convert. The zero value is what production uses.
type ConvertOptions struct {
	// Copy writes a packed blocks.dat (the records' bytes back to back)
	// instead of renaming cow.img and punching holes in it. Convert does
	// this by itself where the filesystem cannot punch holes.
	Copy bool
	// Salvage converts a COW file whose header or exception list is
	// damaged, keeping the exceptions read before the damage, and flags the
	// session invalid. Without it such a file is an error and the session
	// stays unconverted. (A store the kernel itself marked invalid is always
	// converted this way.)
	Salvage bool
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Progress, when set, hears the data pass: one "convert" phase of the
	// bytes of the pre-images read for their checksums (or copied).
	Progress Progress
	// AfterStep, when set, is called after each step (Step*) that ran in
	// this call. An error stops Convert and is returned: tests use it to
	// simulate a crash between steps.
	AfterStep func(step string) error
}

// ConvertResult says what Convert did.
type ConvertResult struct {
	Meta  Meta     // the committed meta.json
	Steps []string // steps run by this call (empty when already converted)
}

// Convert turns the closed session in dir (state.json + cow.img) into
// blocks.dat, blocks.map, blocks.crc and meta.json. It is restartable: run
// again after a crash at any point, it picks up where the previous run
// stopped and produces the same files. meta.json is written last, after
// everything else is fsync'd: it is the commit point.
//
// The session must be closed (phase closing or invalid): its snapshot
// device removed and loop device detached, so nothing writes cow.img.
//
// Memory: the exception list is held and sorted in memory, 24 bytes per
// exception (old chunk, new chunk, list position, CRC) — less than the
// kernel itself held for the live snapshot (about 32 bytes per exception),
// so a machine that ran the session can convert it. Data is never held:
// it is streamed in reads of at most 1 MiB.
func Convert(ctx context.Context, dir string, opts ConvertOptions) (ConvertResult, error) {
	var res ConvertResult
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	step := func(name string) error {
		res.Steps = append(res.Steps, name)
		if opts.AfterStep != nil {
			return opts.AfterStep(name)
		}
		return nil
	}

	metaPath := filepath.Join(dir, MetaFile)
	if b, err := os.ReadFile(metaPath); err == nil {
		// Committed already; at most the cleanup is left.
		m, err := ParseMeta(b, metaPath)
		if err != nil {
			return res, fmt.Errorf("convert %s: meta.json exists but is damaged, not touching the session: %w", dir, err)
		}
		res.Meta = m
		if err := removeStaleTemps(dir); err != nil {
			return res, fmt.Errorf("convert %s: %w", dir, err)
		}
		return res, finishCleanup(dir, step)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("convert %s: %w", dir, err)
	}

	if err := removeStaleTemps(dir); err != nil {
		return res, fmt.Errorf("convert %s: %w", dir, err)
	}
	st, err := ReadState(dir)
	if err != nil {
		return res, fmt.Errorf("convert %s: %w", dir, err)
	}
	if st.Phase != PhaseClosing && st.Phase != PhaseInvalid {
		return res, fmt.Errorf("convert %s: session is %s; close it first (remove its snapshot and loop device): %w", dir, st.Phase, ErrNotClosed)
	}
	if err := releaseCow(filepath.Join(dir, CowFile), filepath.Join(dir, CowTailFile)); err != nil {
		return res, fmt.Errorf("convert %s: %w", dir, err)
	}

	if st.Layout == "" || st.Times.Closed.IsZero() {
		if st.Times.Closed.IsZero() {
			st.Times.Closed = now()
		}
		if st.Layout == "" {
			if st.Layout, err = chooseLayout(dir, opts.Copy); err != nil {
				return res, fmt.Errorf("convert %s: %w", dir, err)
			}
		}
		if err := WriteState(dir, st); err != nil {
			return res, fmt.Errorf("convert %s: %w", dir, err)
		}
		if err := step(StepBegin); err != nil {
			return res, err
		}
	}

	if st.Conversion == nil {
		conv, err := writeMapFiles(ctx, dir, st, opts.Salvage, cmp.Or[Progress](opts.Progress, Quiet{}))
		if err != nil {
			return res, fmt.Errorf("convert %s: %w", dir, err)
		}
		if err := step(StepFiles); err != nil {
			return res, err
		}
		st.Conversion = conv
		if err := WriteState(dir, st); err != nil {
			return res, fmt.Errorf("convert %s: %w", dir, err)
		}
		if err := step(StepMap); err != nil {
			return res, err
		}
	}
	conv := st.Conversion

	if err := placeData(dir, st.Layout); err != nil {
		return res, fmt.Errorf("convert %s: %w", dir, err)
	}
	if err := step(StepData); err != nil {
		return res, err
	}
	if st.Layout == LayoutCOW {
		g := Geometry{ChunkSectors: conv.ChunkSize / SectorSize}
		if err := punchMetadata(filepath.Join(dir, DataFile), g, conv.LastArea, conv.DataEnd); err != nil {
			return res, fmt.Errorf("convert %s: %w", dir, err)
		}
	}
	if err := step(StepPunch); err != nil {
		return res, err
	}

	if err := checkConvertedSizes(dir, conv); err != nil {
		return res, fmt.Errorf("convert %s: %w", dir, err)
	}
	m := buildMeta(st)
	b, err := EncodeMeta(m)
	if err != nil {
		return res, fmt.Errorf("convert %s: %w", dir, err)
	}
	if err := writeFileAtomic(dir, MetaFile, b); err != nil {
		return res, fmt.Errorf("convert %s: commit meta.json: %w", dir, err)
	}
	if res.Meta, err = ParseMeta(b, metaPath); err != nil {
		return res, fmt.Errorf("convert %s: meta.json just written does not read back: %w", dir, err)
	}
	if err := step(StepMeta); err != nil {
		return res, err
	}
	return res, finishCleanup(dir, step)
}

// finishCleanup removes state.json once meta.json is committed.
func finishCleanup(dir string, step func(string) error) error {
	err := os.Remove(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("convert %s: remove state.json: %w", dir, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("convert %s: %w", dir, err)
	}
	return step(StepCleanup)
}

var staleTempRe = regexp.MustCompile(`^\.(blocks\.dat|blocks\.map|blocks\.crc|meta\.json|state\.json)[0-9]+$|^\.punch-probe$`)

// removeStaleTemps deletes temporary files a crashed run left behind
// (renameio names them "." + target + random digits).
func removeStaleTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Type().IsRegular() && staleTempRe.MatchString(e.Name()) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// chooseLayout picks LayoutCOW when the directory's filesystem can punch
// holes, LayoutPacked otherwise (or when asked to copy). The probe uses a
// scratch file, never cow.img.
func chooseLayout(dir string, forceCopy bool) (string, error) {
	if forceCopy {
		return LayoutPacked, nil
	}
	p := filepath.Join(dir, ".punch-probe")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	defer os.Remove(p)
	defer f.Close()
	if _, err := f.Write(make([]byte, 8192)); err != nil {
		return "", err
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
	switch {
	case err == nil:
		return LayoutCOW, nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
		return LayoutPacked, nil
	}
	return "", fmt.Errorf("probe hole punching in %s: %w", dir, err)
}

// convEntry is one exception during conversion: 24 bytes.
type convEntry struct {
	old, new uint64
	seq      uint32 // position in the exception list: the first of duplicates wins
	crc      uint32
}

// writeMapFiles reads cow.img, makes one record per chunk sorted by sector,
// computes each record's CRC-32C in one pass over the data and writes
// blocks.crc and blocks.map (and, packed, blocks.dat) durably, telling p
// how far the data pass is.
func writeMapFiles(ctx context.Context, dir string, st State, salvage bool, p Progress) (*Conversion, error) {
	cowPath := filepath.Join(dir, CowFile)
	f, err := os.Open(cowPath)
	if err != nil {
		return nil, fmt.Errorf("no conversion checkpoint and cannot open the COW file: %w", err)
	}
	defer f.Close()
	conv := &Conversion{CowValid: true, LastArea: -1, ChunkSize: st.ChunkSize}
	entries, lenient, err := readExceptions(f, cowPath, st, salvage, conv)
	if err != nil {
		return nil, err
	}
	if entries, err = dedupeExceptions(entries, cowPath, lenient, conv); err != nil {
		return nil, err
	}
	cb, devSize := int64(conv.ChunkSize), st.Device.Size
	recSize := func(e convEntry) int64 { return min(cb, devSize-int64(e.old)*cb) }
	buf := directio.AlignedBuf(convReadBlock)
	// The COW layout reads whole chunks; the packed one copies the
	// records' bytes.
	total := uint64(len(entries)) * uint64(cb)
	if st.Layout != LayoutCOW {
		total = 0
		for _, e := range entries {
			total += uint64(recSize(e))
		}
	}
	p.Begin("convert", total)
	defer p.End()
	var dat *renameio.PendingFile
	if st.Layout == LayoutCOW {
		// One sequential pass over the data in COW order, around the page
		// cache where the store allows it (nothing reads it again soon).
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL) // a hint for the cached path: its failure changes nothing
		r := directio.NewReader(f)
		err := crcInCowOrder(ctx, r, entries, cb, recSize, buf, p.Add)
		r.Close()
		if err != nil {
			return nil, err
		}
		slices.SortFunc(entries, func(a, b convEntry) int { return cmp.Compare(a.old, b.old) })
	} else {
		slices.SortFunc(entries, func(a, b convEntry) int { return cmp.Compare(a.old, b.old) })
		dat, err = renameio.NewPendingFile(filepath.Join(dir, DataFile), renameio.WithTempDir(dir), renameio.WithPermissions(filePerm))
		if err != nil {
			return nil, err
		}
		defer dat.Cleanup()
		if err := copyPacked(ctx, f, dat, entries, cb, recSize, buf, p.Add); err != nil {
			return nil, err
		}
	}
	if err := writeRecords(dir, entries, cb, recSize, st.Layout, conv); err != nil {
		return nil, err
	}
	if dat != nil {
		if err := dat.CloseAtomicallyReplace(); err != nil {
			return nil, err
		}
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return conv, nil
}

// readExceptions reads the exceptions the kernel committed in the COW file
// f. It notes in conv what it finds wrong (and how much it kept), sets the
// chunk size the header gives, and reports whether what follows must be
// lenient (salvage, an invalid session or an invalid header: keep what
// can be kept instead of failing).
func readExceptions(f *os.File, cowPath string, st State, salvage bool, conv *Conversion) (entries []convEntry, lenient bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	lenient = salvage || st.Phase == PhaseInvalid
	devSize := st.Device.Size
	cow, err := OpenCow(f, fi.Size(), cowPath)
	switch {
	case errors.Is(err, ErrUninitialized):
		// The kernel writes the header when it loads the table, so the
		// snapshot never ran: whatever was written was not captured.
		conv.CowValid = false
		conv.Notes = append(conv.Notes, "the COW store was never initialised by the kernel: the snapshot never started, so writes made in this session were not captured")
	case err != nil:
		if !salvage {
			return nil, false, err
		}
		conv.CowValid = false
		conv.Notes = append(conv.Notes, fmt.Sprintf("the COW header is unreadable, nothing salvaged: %v", err))
	default:
		cb := cow.ChunkBytes()
		if uint32(cb) != st.ChunkSize {
			conv.Notes = append(conv.Notes, fmt.Sprintf("chunk size %d bytes in the COW header overrides %d bytes in state.json (the kernel does the same)", cb, st.ChunkSize))
			conv.ChunkSize = uint32(cb)
		}
		if !cow.Header.IsValid() {
			conv.CowValid = false
			lenient = true
			conv.Notes = append(conv.Notes, "the kernel marked the snapshot invalid in the COW header; exceptions committed before that are kept")
		}
		devChunks := uint64((devSize + cb - 1) / cb)
		stats, werr := cow.Walk(func(e CowEntry) error {
			if e.OldChunk >= devChunks {
				return formatErr(cowPath, e.Offset, e.Index, ErrCorrupt,
					"exception for origin chunk %d lies past the end of the device (%d bytes, %d chunks)", e.OldChunk, devSize, devChunks)
			}
			if e.Index >= math.MaxUint32 {
				return fmt.Errorf("%s: more than %d exceptions; not supported", cowPath, uint32(math.MaxUint32))
			}
			entries = append(entries, convEntry{old: e.OldChunk, new: e.NewChunk, seq: uint32(e.Index)})
			return nil
		})
		conv.LastArea = stats.LastArea
		if werr != nil {
			if !lenient {
				return nil, false, werr
			}
			conv.CowValid = false
			conv.Notes = append(conv.Notes, fmt.Sprintf("the exception list is damaged; kept the %d exceptions before the damage: %v", len(entries), werr))
		}
	}
	return entries, lenient, nil
}

// dedupeExceptions drops the duplicates of an origin chunk (the kernel
// never commits one twice, and when loading it finds the first one loaded;
// that one is kept) and refuses two origin chunks sharing a COW chunk,
// which is damage (one holds the other's bytes) — or, lenient, keeps the
// first of them. entries come back sorted by COW chunk.
func dedupeExceptions(entries []convEntry, cowPath string, lenient bool, conv *Conversion) ([]convEntry, error) {
	slices.SortFunc(entries, func(a, b convEntry) int {
		return cmp.Or(cmp.Compare(a.old, b.old), cmp.Compare(a.seq, b.seq))
	})
	n := len(entries)
	entries = slices.CompactFunc(entries, func(a, b convEntry) bool { return a.old == b.old })
	if d := n - len(entries); d > 0 {
		conv.Notes = append(conv.Notes, fmt.Sprintf("dropped %d duplicate exceptions for origin chunks already saved (kept the first of each)", d))
	}
	slices.SortFunc(entries, func(a, b convEntry) int {
		return cmp.Or(cmp.Compare(a.new, b.new), cmp.Compare(a.seq, b.seq))
	})
	for i := 1; i < len(entries); i++ {
		if entries[i].new == entries[i-1].new {
			if !lenient {
				return nil, formatErr(cowPath, -1, int64(entries[i].seq), ErrCorrupt,
					"origin chunks %d and %d both point at COW chunk %d", entries[i-1].old, entries[i].old, entries[i].new)
			}
		}
	}
	if lenient {
		m := len(entries)
		entries = slices.CompactFunc(entries, func(a, b convEntry) bool { return a.new == b.new })
		if d := m - len(entries); d > 0 {
			conv.CowValid = false
			conv.Notes = append(conv.Notes, fmt.Sprintf("dropped %d exceptions sharing a COW chunk with an earlier one", d))
		}
	}
	return entries, nil
}

// writeRecords writes blocks.crc and blocks.map for entries (sorted by
// origin chunk, their CRCs computed): each record's offset is its COW
// chunk's (layout cow) or the next packed offset (layout packed). It sets
// conv's records, data end and the two files' checksums.
func writeRecords(dir string, entries []convEntry, cb int64, recSize func(convEntry) int64, layout string, conv *Conversion) error {
	var dataEnd, packedOff int64
	recs := func(yield func(Record, uint32) bool) {
		packedOff = 0
		for _, e := range entries {
			size := recSize(e)
			r := Record{Sector: e.old * uint64(cb/SectorSize), Size: uint32(size)}
			if layout == LayoutCOW {
				r.Offset = e.new * uint64(cb)
			} else {
				r.Offset = uint64(packedOff)
				packedOff += size
			}
			dataEnd = max(dataEnd, int64(r.Offset)+size)
			if !yield(r, e.crc) {
				return
			}
		}
	}
	crcSum, err := writeStream(dir, CRCFile, func(w io.Writer) error {
		var b [CRCSize]byte
		for _, c := range recs {
			binary.LittleEndian.PutUint32(b[:], c)
			if _, err := w.Write(b[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	mapSum, err := writeStream(dir, MapFile, func(w io.Writer) error {
		var b []byte
		for r := range recs {
			b = r.Append(b[:0])
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	conv.Records = int64(len(entries))
	conv.DataEnd = dataEnd
	conv.BlocksCRC = crcSum
	conv.BlocksMap = mapSum
	return nil
}

// crcInCowOrder computes each entry's CRC, reading the COW file once in
// increasing chunk order; runs of neighbouring chunks are read together.
// entries must be sorted by new chunk. A reader goroutine keeps the next
// reads in flight (convReadAhead buffers of len(buf) bytes) while
// convCRCWorkers goroutines checksum the blocks read, so reading and
// CRC-32C overlap on the machine's CPUs; the kernel is told the file is
// read sequentially. (Chunks larger than a read are summed by one goroutine,
// in order.)
func crcInCowOrder(ctx context.Context, r io.ReaderAt, entries []convEntry, cb int64, recSize func(convEntry) int64, buf []byte, done func(uint64)) error {
	type block struct {
		off int64
		p   []byte
		k   int // entries[k] is the first entry the block touches
		err error
	}
	free := make(chan []byte, convReadAhead)
	full := make(chan block, convReadAhead)
	free <- buf
	for i := 1; i < convReadAhead; i++ {
		free <- directio.AlignedBuf(len(buf))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(full)
		for i := 0; i < len(entries); {
			j := i + 1
			for j < len(entries) && entries[j].new == entries[j-1].new+1 {
				j++
			}
			off, end := int64(entries[i].new)*cb, int64(entries[j-1].new)*cb+cb
			for off < end {
				var b []byte
				select {
				case b = <-free:
				case <-ctx.Done():
					return
				}
				n := min(int64(len(b)), end-off)
				err := readFull(r, b[:n], off)
				if err != nil {
					err = fmt.Errorf("read COW data at offset %d: %w", off, err)
				}
				k := i + int(off/cb-int64(entries[i].new))
				full <- block{off: off, p: b[:n], k: k, err: err}
				if err != nil {
					return
				}
				done(uint64(n)) // this goroutine only, ended before the caller's next call
				off += n
			}
			i = j
		}
	}()
	workers := convCRCWorkers
	if cb > int64(len(buf)) {
		workers = 1 // a chunk spans blocks: sum them in order
	}
	errs := make(chan error, workers)
	for range workers {
		go func() {
			var err error
			for b := range full {
				if err != nil || b.err != nil {
					err = cmp.Or(err, b.err)
					cancel()
					continue // drain
				}
				// Blocks start on chunk boundaries or inside a chunk
				// larger than a block; the entries they touch are
				// consecutive.
				p, off, k := b.p, b.off, b.k
				for len(p) > 0 {
					within := off % cb
					take := min(int64(len(p)), cb-within)
					if size := recSize(entries[k]); within < size {
						u := min(take, size-within)
						entries[k].crc = crc32c.Update(entries[k].crc, p[:u])
					}
					p, off = p[take:], off+take
					if off%cb == 0 {
						k++
					}
				}
				free <- b.p[:cap(b.p)]
			}
			errs <- err
		}()
	}
	var err error
	for range workers {
		err = cmp.Or(err, <-errs)
	}
	return cmp.Or(err, ctx.Err())
}

// copyPacked copies each entry's bytes (sorted by old chunk) to w back to
// back, computing CRCs on the way and telling done the bytes copied.
func copyPacked(ctx context.Context, r io.ReaderAt, w io.Writer, entries []convEntry, cb int64, recSize func(convEntry) int64, buf []byte, done func(uint64)) error {
	bw := bufio.NewWriterSize(w, convReadBlock)
	for i := range entries {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		e := &entries[i]
		off, size := int64(e.new)*cb, recSize(*e)
		for got := int64(0); got < size; {
			n := min(int64(len(buf)), size-got)
			if err := readFull(r, buf[:n], off+got); err != nil {
				return fmt.Errorf("read COW data at offset %d: %w", off+got, err)
			}
			e.crc = crc32c.Update(e.crc, buf[:n])
			if _, err := bw.Write(buf[:n]); err != nil {
				return err
			}
			got += n
			done(uint64(n))
		}
	}
	return bw.Flush()
}

// writeStream writes dir/name atomically from fill and returns the hex
// SHA-256 of what was written.
func writeStream(dir, name string, fill func(io.Writer) error) (string, error) {
	pf, err := renameio.NewPendingFile(filepath.Join(dir, name), renameio.WithTempDir(dir), renameio.WithPermissions(filePerm))
	if err != nil {
		return "", err
	}
	defer pf.Cleanup()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(pf, h), 256<<10)
	if err := fill(bw); err != nil {
		return "", err
	}
	if err := bw.Flush(); err != nil {
		return "", err
	}
	if err := pf.CloseAtomicallyReplace(); err != nil {
		return "", err
	}
	return hexSum(h), nil
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

// placeData makes blocks.dat final: LayoutCOW renames cow.img to it (no
// byte copied), LayoutPacked removes cow.img (blocks.dat was written with
// the map). Both are idempotent.
func placeData(dir, layout string) error {
	cow, dat := filepath.Join(dir, CowFile), filepath.Join(dir, DataFile)
	_, cowErr := os.Lstat(cow)
	if cowErr != nil && !errors.Is(cowErr, fs.ErrNotExist) {
		return cowErr
	}
	if layout == LayoutCOW && cowErr == nil {
		if err := os.Rename(cow, dat); err != nil {
			return err
		}
		return syncDir(dir)
	}
	if _, err := os.Lstat(dat); err != nil {
		return fmt.Errorf("neither %s nor %s is there: %w", CowFile, DataFile, err)
	}
	if cowErr == nil {
		if err := os.Remove(cow); err != nil {
			return err
		}
		return syncDir(dir)
	}
	return nil
}

// punchMetadata cuts blocks.dat after its last record and frees the
// header chunk and the metadata areas 0..lastArea that remain: no stale
// exception list stays behind, and no space is spent on it. Where the
// filesystem refuses to punch, the chunks are overwritten with zeros.
func punchMetadata(path string, g Geometry, lastArea, dataEnd int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(dataEnd); err != nil {
		return err
	}
	cb := g.ChunkBytes()
	var zeros []byte
	punch := func(chunk int64) error {
		off := chunk * cb
		if off >= dataEnd {
			return nil
		}
		n := min(cb, dataEnd-off)
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("punch chunk %d of %s: %w", chunk, path, err)
		}
		if zeros == nil {
			zeros = make([]byte, min(cb, convReadBlock))
		}
		for done := int64(0); done < n; {
			k := min(int64(len(zeros)), n-done)
			if _, err := f.WriteAt(zeros[:k], off+done); err != nil {
				return err
			}
			done += k
		}
		return nil
	}
	if err := punch(0); err != nil {
		return err
	}
	for a := int64(0); a <= lastArea; a++ {
		if err := punch(g.AreaChunk(a)); err != nil {
			return err
		}
	}
	return f.Sync()
}

// checkConvertedSizes makes sure the files a restart relies on are the ones
// the checkpoint describes before meta.json commits them.
func checkConvertedSizes(dir string, conv *Conversion) error {
	for _, c := range []struct {
		name string
		want int64
	}{
		{MapFile, conv.Records * RecordSize},
		{CRCFile, conv.Records * CRCSize},
		{DataFile, conv.DataEnd},
	} {
		fi, err := os.Stat(filepath.Join(dir, c.name))
		if err != nil {
			return err
		}
		if fi.Size() != c.want {
			return formatErr(filepath.Join(dir, c.name), -1, -1, ErrCorrupt,
				"is %d bytes, the conversion checkpoint says %d", fi.Size(), c.want)
		}
	}
	return nil
}

// buildMeta makes meta.json's content from the state and its checkpoint.
func buildMeta(st State) Meta {
	conv := st.Conversion
	ts := st.Times.Mounted
	if ts.IsZero() {
		ts = st.Times.Armed
	}
	state, reason := StateComplete, ""
	if st.Phase == PhaseInvalid || !conv.CowValid {
		state = StateInvalid
		reason = st.InvalidReason
		if reason == "" && len(conv.Notes) > 0 {
			reason = conv.Notes[0]
		}
		if reason == "" {
			reason = "the session was marked invalid"
		}
	}
	return Meta{
		Device:           st.Device.Path,
		Timestamp:        ts.UnixNano(),
		BlockSize:        conv.ChunkSize,
		FsType:           st.FsType,
		TotalBlocksSaved: conv.Records,
		SnapshotType:     SnapshotTypeCOW,
		Dmsnap: &DmsnapMeta{
			FormatVersion: metaVersion(st.Sequence),
			Name:          st.Name,
			Sequence:      st.Sequence,
			Device:        st.Device,
			ChunkSize:     conv.ChunkSize,
			Layout:        st.Layout,
			Times:         st.Times.utc(),
			State:         state,
			InvalidReason: reason,
			Notes:         conv.Notes,
			Label:         st.Label,
			Pinned:        st.Pinned,
			Checksums: Checksums{
				RecordCRC: CRCAlgorithm,
				BlocksMap: conv.BlocksMap,
				BlocksCRC: conv.BlocksCRC,
			},
		},
	}
}

// metaVersion is the dmsnap format a session's meta.json is written in:
// the current one, or 1 for a session armed before sessions had a
// sequence number (its state.json has none), which format 2 requires.
func metaVersion(sequence int) int {
	if sequence == 0 {
		return 1
	}
	return MetaFormatVersion
}
