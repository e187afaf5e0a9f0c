package dm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// Pure encoders and decoders of device-mapper ioctl buffers. A buffer is a
// struct dm_ioctl header followed by a data area; for table loads and status
// replies the data area holds struct dm_target_spec records, each followed
// by a NUL-terminated parameter or status string. Integers are in the
// machine's byte order (the kernel reads the structs in place).
//
// struct dm_ioctl (include/uapi/linux/dm-ioctl.h), 312 bytes:
//
//	off  size  field
//	  0    12  version[3]    u32 each; in: the interface version we speak
//	 12     4  data_size     total buffer size in; bytes used out
//	 16     4  data_start    offset of the data area from the buffer start
//	 20     4  target_count  in: targets loaded; out: targets reported
//	 24     4  open_count    out
//	 28     4  flags         DM_*_FLAG
//	 32     4  event_nr      in: udev cookie; out: event counter
//	 36     4  padding
//	 40     8  dev           dev_t
//	 48   128  name          NUL-terminated
//	176   129  uuid          NUL-terminated
//	305     7  data          start of the data area (padding)
//
// struct dm_target_spec, 40 bytes:
//
//	off  size  field
//	  0     8  sector_start
//	  8     8  length        sectors
//	 16     4  status        must be 0 on load
//	 20     4  next          see below
//	 24    16  target_type   NUL-terminated
//	 40        parameter string, NUL-terminated, padded to 8 bytes
//
// The meaning of next differs by direction, which is easy to get wrong:
//   - DM_TABLE_LOAD (we write): next is the offset of the following spec
//     from the start of *this* spec, and must keep specs 8-byte aligned.
//   - DM_TABLE_STATUS (kernel writes): next is the offset of the following
//     spec from the start of the *first* spec (the data area).
const (
	headerSize   = 312 // sizeof(struct dm_ioctl)
	specSize     = 40  // sizeof(struct dm_target_spec)
	specAlign    = 8
	nameLen      = 128 // DM_NAME_LEN
	uuidLen      = 129 // DM_UUID_LEN
	offVersion   = 0
	offDataSize  = 12
	offDataStart = 16
	offTargetCnt = 20
	offOpenCount = 24
	offFlags     = 28
	offEventNr   = 32
	offDev       = 40
	offName      = 48
	offUUID      = 176

	specOffStart  = 0
	specOffLength = 8
	specOffStatus = 16
	specOffNext   = 20
	specOffType   = 24
)

// interfaceVersion is the dm ioctl interface version we ask for: major 4,
// and no newer minor than the oldest kernel we run on needs.
var interfaceVersion = [3]uint32{4, 0, 0}

var ne = binary.NativeEndian

// header is the decoded struct dm_ioctl.
type header struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Dev         uint64
	Name        string
	UUID        string
}

func align8(n int) int { return (n + specAlign - 1) &^ (specAlign - 1) }

// checkName validates a device-mapper device name as the kernel does
// (dm-ioctl.c check_name) plus the length limit of the ioctl field.
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty device name")
	case len(name) >= nameLen:
		return fmt.Errorf("device name %q is longer than %d bytes", name, nameLen-1)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("device name %q contains '/' or NUL", name)
	case name == "." || name == "..":
		return fmt.Errorf("device name %q is not allowed", name)
	}
	return nil
}

// putHeader writes a request header into buf[:headerSize].
func putHeader(buf []byte, h header) {
	for i, v := range h.Version {
		ne.PutUint32(buf[offVersion+4*i:], v)
	}
	ne.PutUint32(buf[offDataSize:], h.DataSize)
	ne.PutUint32(buf[offDataStart:], h.DataStart)
	ne.PutUint32(buf[offTargetCnt:], h.TargetCount)
	ne.PutUint32(buf[offOpenCount:], uint32(h.OpenCount))
	ne.PutUint32(buf[offFlags:], h.Flags)
	ne.PutUint32(buf[offEventNr:], h.EventNr)
	ne.PutUint64(buf[offDev:], h.Dev)
	copy(buf[offName:offName+nameLen-1], h.Name)
	copy(buf[offUUID:offUUID+uuidLen-1], h.UUID)
}

// decodeHeader reads the struct dm_ioctl at the start of buf.
func decodeHeader(buf []byte) (header, error) {
	if len(buf) < headerSize {
		return header{}, fmt.Errorf("dm ioctl buffer: %d bytes, need at least %d", len(buf), headerSize)
	}
	var h header
	for i := range h.Version {
		h.Version[i] = ne.Uint32(buf[offVersion+4*i:])
	}
	h.DataSize = ne.Uint32(buf[offDataSize:])
	h.DataStart = ne.Uint32(buf[offDataStart:])
	h.TargetCount = ne.Uint32(buf[offTargetCnt:])
	h.OpenCount = int32(ne.Uint32(buf[offOpenCount:]))
	h.Flags = ne.Uint32(buf[offFlags:])
	h.EventNr = ne.Uint32(buf[offEventNr:])
	h.Dev = ne.Uint64(buf[offDev:])
	h.Name = cString(buf[offName : offName+nameLen])
	h.UUID = cString(buf[offUUID : offUUID+uuidLen])
	return h, nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// encodeRequest builds a buffer of size bytes (at least headerSize) with only
// the header filled in: for commands without input data (status, clear)
// the rest is room for the kernel's reply.
func encodeRequest(name string, flags uint32, size int) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	size = max(align8(size), headerSize)
	buf := make([]byte, size)
	putHeader(buf, header{
		Version:   interfaceVersion,
		DataSize:  uint32(size),
		DataStart: headerSize,
		Flags:     flags,
		Name:      name,
	})
	return buf, nil
}

// encodeTableLoad builds the DM_TABLE_LOAD buffer for device name. Each spec
// is followed by its parameters and a NUL, padded with zeros so the next
// spec is 8-byte aligned; next is relative to the spec it is in. The total
// size is a multiple of 8.
func encodeTableLoad(name string, flags uint32, specs []TargetSpec) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("load table %s: no targets", name)
	}
	size := headerSize
	for _, s := range specs {
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("load table %s: %w", name, err)
		}
		size += align8(specSize + len(s.Params) + 1)
	}
	buf := make([]byte, size)
	putHeader(buf, header{
		Version:     interfaceVersion,
		DataSize:    uint32(size),
		DataStart:   headerSize,
		TargetCount: uint32(len(specs)),
		Flags:       flags,
		Name:        name,
	})
	off := headerSize
	for _, s := range specs {
		rec := align8(specSize + len(s.Params) + 1)
		p := buf[off:]
		ne.PutUint64(p[specOffStart:], s.Start)
		ne.PutUint64(p[specOffLength:], s.Length)
		ne.PutUint32(p[specOffStatus:], 0)
		ne.PutUint32(p[specOffNext:], uint32(rec))
		copy(p[specOffType:specOffType+maxTypeLen-1], s.Type)
		copy(p[specSize:], s.Params) // NUL and padding are already zero
		off += rec
	}
	return buf, nil
}

// statusReply is a decoded DM_TABLE_STATUS reply.
type statusReply struct {
	Header header
	Specs  []TargetSpec
	// Full is set when the kernel ran out of room (DM_BUFFER_FULL_FLAG):
	// Specs is incomplete and the call must be repeated with a larger buffer.
	Full bool
}

// bufferFullFlag is DM_BUFFER_FULL_FLAG.
const bufferFullFlag = 0x100

// decodeStatusReply decodes the reply to DM_TABLE_STATUS. The specs start at
// data_start; each spec's next is relative to the first spec; the bytes the
// kernel filled end at data_size. A reply with the buffer-full flag is
// returned with Full set and no specs.
func decodeStatusReply(buf []byte) (statusReply, error) {
	h, err := decodeHeader(buf)
	if err != nil {
		return statusReply{}, err
	}
	r := statusReply{Header: h}
	if h.Flags&bufferFullFlag != 0 {
		r.Full = true
		return r, nil
	}
	if h.TargetCount == 0 {
		return r, nil
	}
	start, end := int(h.DataStart), int(h.DataSize)
	if start < headerSize || end > len(buf) || start > end {
		return statusReply{}, fmt.Errorf("dm status reply: data area [%d, %d) outside the %d-byte buffer", start, end, len(buf))
	}
	data := buf[start:end]
	rel := 0
	for i := range int(h.TargetCount) {
		if rel < 0 || rel+specSize > len(data) {
			return statusReply{}, fmt.Errorf("dm status reply: target %d at data offset %d runs past the %d bytes returned", i, rel, len(data))
		}
		p := data[rel:]
		str := p[specSize:]
		nul := bytes.IndexByte(str, 0)
		if nul < 0 {
			return statusReply{}, fmt.Errorf("dm status reply: target %d at data offset %d: string not NUL-terminated", i, rel)
		}
		r.Specs = append(r.Specs, TargetSpec{
			Start:  ne.Uint64(p[specOffStart:]),
			Length: ne.Uint64(p[specOffLength:]),
			Type:   cString(p[specOffType : specOffType+maxTypeLen]),
			Params: string(str[:nul]),
		})
		next := int(ne.Uint32(p[specOffNext:]))
		if i+1 < int(h.TargetCount) && next <= rel {
			return statusReply{}, fmt.Errorf("dm status reply: target %d at data offset %d: next offset %d does not move forward", i, rel, next)
		}
		rel = next
	}
	return r, nil
}
