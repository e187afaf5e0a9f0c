package restore

// Progress receives the progress of a long pass. Begin starts a phase
// ("verify", "copy", "write") of total bytes, Add reports bytes done, End
// closes the phase. Calls come from one goroutine.
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
