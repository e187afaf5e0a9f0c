package rollback

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/snapstore"
)

// DryRun plans the restore of the device to its state before
// sessions[target] and checks it as the restore would, writing nothing: a
// busy device is a warning here. merge notes that --merge was asked for.
func (r *Restorer) DryRun(ctx context.Context, sessions []snapstore.SessionInfo, target int, merge bool) (*Result, error) {
	if err := r.RefuseUnfinished(); err != nil {
		return nil, err
	}
	chain := sessions[target:]
	dev := newProbe(r.Device, r.Device)
	if r.Active != nil {
		dev = newProbe(r.cfg.originPath(r.Name), r.Device)
	}
	dev.busyWarns = true
	p, warns, err := r.plan(ctx, chain, dev)
	if err != nil {
		return nil, err
	}
	sum, err := p.Summarize(ctx)
	if err != nil {
		return nil, err
	}
	res := r.result(chain)
	res.DryRun, res.Summary, res.Warnings = true, sum, append(res.Warnings, warns...)
	res.ArmedCloses = r.Active != nil
	if merge {
		res.Merge = &MergeInfo{Requested: true}
	}
	return res, nil
}

// ToImage writes the device as it was before sessions[target] to the file
// (or block device) to, reading the device only: for an activated device
// its live session's snapshot, so that the writes the live session holds
// are undone too without closing it. force allows overwriting a file that
// is not empty, or a block device.
func (r *Restorer) ToImage(ctx context.Context, sessions []snapstore.SessionInfo, target int, to string, force bool) (*Result, error) {
	if err := r.RefuseUnfinished(); err != nil {
		return nil, err
	}
	chain := sessions[target:]
	src := r.Device
	if r.Active != nil {
		cur := r.Active.Current()
		if cur == nil {
			return nil, fmt.Errorf("%s is activated but has no live session (run dmsnap watch, or dmsnap attach %s)", r.Name, r.Device)
		}
		src = dm.Stack{Name: r.Name}.SnapshotPath(cur.N)
	}
	// What the image is made of: the destination must be none of it.
	sources := []string{src, r.Device}
	for _, s := range chain {
		for _, f := range []string{snapstore.DataFile, snapstore.MapFile, snapstore.CRCFile, snapstore.MetaFile} {
			sources = append(sources, filepath.Join(s.Dir, f))
		}
	}
	tgt, err := restore.CheckImageTarget(to, sources, force, restore.TargetProbe{Stat: restore.StatPath, LoopBacking: loopBacking})
	if err != nil {
		return nil, err
	}
	p, warns, err := r.plan(ctx, chain, nil)
	if err != nil {
		return nil, err
	}
	sf, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer sf.Close()
	size, err := dm.Size(sf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	for i := len(chain) - 1; i >= 0; i-- {
		if m := chain[i].Meta; m != nil && m.Dmsnap != nil && m.Dmsnap.Device.Size != size {
			return nil, &restore.IdentityError{Device: src, Session: chain[i].ID, Field: "size",
				Want: fmt.Sprintf("%d bytes", m.Dmsnap.Device.Size), Got: fmt.Sprintf("%d bytes", size)}
		}
	}
	out, err := restore.OpenImageTarget(tgt)
	if err != nil {
		return nil, err
	}
	var dst restore.ImageFile = out
	if tgt.ID.IsBlock() {
		n, err := dm.Size(out)
		if err != nil {
			tgt.Discard(out)
			return nil, fmt.Errorf("%s: %w; nothing was written", to, err)
		}
		dst = restore.BlockImage{F: out, Size: n}
	}
	res, stats, err := p.ApplyToImage(ctx, dst, sf, size, restore.ApplyOptions{SkipVerify: true, Progress: r.cfg.progress()})
	var ie *restore.IncompleteImageError
	switch {
	case errors.As(err, &ie):
		out.Close()
		state := "now holds neither what it held nor the restored image"
		if !tgt.Exists {
			state = "holds an incomplete image"
		}
		return nil, fmt.Errorf("writing %s: %w; %s %s: delete it, or run the restore again (%s was only read)", to, err, to, state, src)
	case err != nil:
		tgt.Discard(out)
		state := "was not changed"
		if !tgt.Exists {
			state = "was not created"
		}
		return nil, fmt.Errorf("writing %s: %w; nothing was written: %s %s", to, err, to, state)
	}
	if err := out.Close(); err != nil {
		return nil, fmt.Errorf("closing %s after writing the image: %w; the image may be incomplete: run the restore again (%s was only read)", to, err, src)
	}
	rr := r.result(chain)
	rr.To, rr.Image, rr.Summary, rr.Written, rr.Writes = to, &stats, res.Summary, res.Bytes, res.Writes
	rr.Source = src
	rr.Warnings = append(rr.Warnings, warns...)
	return rr, nil
}

// loopBacking is restore.TargetProbe's LoopBacking: the file behind a loop
// device, by the numbers the kernel holds.
func loopBacking(rdev uint64) (dev, ino uint64, ok bool, err error) {
	return dm.LoopBacking(dm.DevFromNumber(rdev))
}
