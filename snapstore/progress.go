package snapstore

// Progress receives the progress of a long pass. Begin starts a phase
// ("verify", "copy", "write") of total bytes, Add reports bytes done, End
// closes the phase. Calls never overlap (they may come from another
// goroutine than the phase's Begin, one at a time). The restore and the
// CLI use the same type (restore.Progress is this one).
type Progress interface {
	Begin(phase string, total uint64)
	Add(n uint64)
	End()
}

// Quiet is a Progress that shows nothing.
type Quiet struct{}

func (Quiet) Begin(string, uint64) {}
func (Quiet) Add(uint64)           {}
func (Quiet) End()                 {}
