// Package atomicfile writes small state files so that a power cut leaves
// either the old content or the new one, and the new one once the call
// returns: the bytes go to a temporary file in the same directory, which
// is fsynced and renamed over the target (google/renameio), and then the
// directory itself is fsynced, so the rename is on disk too. renameio alone
// stops before that last step: after a power cut the directory entry may
// still name the old file, or none.
//
// Every file dmsnap keeps in its state directory or its stores (registry,
// password hash, merges, views, state.json, meta.json, pruned.log) is
// written through this package or appended with Append.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// WriteFile replaces path with data (mode perm) atomically and durably. The
// temporary file goes in path's own directory: renameio would otherwise try
// $TMPDIR, which may be another filesystem.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := renameio.WriteFile(path, data, perm, renameio.WithTempDir(dir)); err != nil {
		return err
	}
	return SyncDir(dir)
}

// Remove removes path durably: the directory is fsynced after the unlink.
// A missing file is success.
func Remove(path string) error {
	if err := os.Remove(path); err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// Append adds data at the end of path (created with mode perm when
// missing), then fsyncs the file and, when it was created, its directory.
func Append(path string, data []byte, perm os.FileMode) error {
	_, statErr := os.Lstat(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("append to %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if statErr != nil {
		return SyncDir(filepath.Dir(path))
	}
	return nil
}

// SyncDir fsyncs a directory, making the creations, renames and removals
// of entries in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
