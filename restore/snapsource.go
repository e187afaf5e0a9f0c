package restore

import (
	"errors"
	"fmt"
	"io"

	"github.com/dmsnap/dmsnap/snapstore"
)

// StoreSession is a finished session of the store (snapstore.Session) as the
// planner sees it.
//
// Records checks the whole map before it hands out the first record: for
// a session dmsnap wrote, blocks.map and blocks.crc are read through once
// (sorted, no overlaps, inside blocks.dat, matching lengths, both SHA-256
// equal to meta.json's), so a damaged map fails Records itself instead of
// surfacing after the planner has already yielded part of the plan. A
// session the seed wrote holds its records in write order: snapstore reads
// the whole map, sorts it by sector and refuses overlapping records.
type StoreSession struct {
	S *snapstore.Session
}

// NewStoreSession adapts s. The caller keeps ownership: it closes s.
func NewStoreSession(s *snapstore.Session) *StoreSession { return &StoreSession{S: s} }

// ID implements Session.
func (a *StoreSession) ID() string { return a.S.ID }

// Records implements Session.
func (a *StoreSession) Records() (RecordIter, error) {
	if a.S.Verified() {
		// The check pass: snapstore's iterator does the whole-file checks
		// when it reaches the end.
		it, err := a.S.Records()
		if err != nil {
			return nil, err
		}
		for {
			_, err = it.Next()
			if err != nil {
				break
			}
		}
		it.Close()
		if !errors.Is(err, io.EOF) {
			return nil, err
		}
	}
	it, err := a.S.Records()
	if err != nil {
		return nil, err
	}
	return storeIter{it}, nil
}

// ReadRecord implements Session: snapstore checks the record's CRC-32C
// where the session has one.
func (a *StoreSession) ReadRecord(r Record, p []byte) error {
	return a.S.ReadRecord(r, p)
}

// Info is what Preflight needs to know of the session, from its meta.json.
func (a *StoreSession) Info() SessionInfo {
	info := SessionInfo{ID: a.S.ID, State: snapstore.StatusComplete, Verified: a.S.Verified()}
	if d := a.S.Meta.Dmsnap; d != nil {
		if d.State != snapstore.StateComplete {
			info.State = snapstore.Status(d.State)
		}
		info.Identity = Identity{Size: uint64(d.Device.Size), FSUUID: d.Device.FSUUID}
	}
	return info
}

type storeIter struct{ it *snapstore.RecordIter }

func (s storeIter) Next() (Record, error) {
	e, err := s.it.Next()
	if err != nil {
		if err != io.EOF {
			return Record{}, fmt.Errorf("record stream: %w", err)
		}
		return Record{}, io.EOF
	}
	return e.Record, nil
}

func (s storeIter) Close() error { return s.it.Close() }
