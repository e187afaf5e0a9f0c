package snapstore

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dmsnap/dmsnap/internal/directio"
)

// CowUsed reports whether the kernel initialised the session's COW (its
// first four bytes are no longer zero, in cow.img or, when its start was
// not mapped, in the tail file), or conversion has begun.
func CowUsed(dir string) (bool, error) {
	if _, err := os.Stat(filepath.Join(dir, DataFile)); err == nil {
		return true, nil
	}
	for _, name := range []string{CowFile, CowTailFile} {
		if used, err := headerWritten(filepath.Join(dir, name)); used || err != nil {
			return used, err
		}
	}
	return false, nil
}

// headerWritten reports whether the first four bytes of the file at path
// are not zero; a missing file has none.
func headerWritten(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	// Around the page cache: the kernel may write the header through the
	// store's device (dm.AttachCOW), which a cached page would not show.
	r := directio.NewReader(f)
	defer r.Close()
	head := directio.AlignedBuf(directio.Align)
	n, err := r.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if n < 4 {
		return false, nil
	}
	return !bytes.Equal(head[:4], make([]byte, 4)), nil
}
