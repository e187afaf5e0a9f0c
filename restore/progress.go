package restore

import "github.com/dmsnap/dmsnap/snapstore"

// Progress receives the progress of a long pass (snapstore.Progress):
// restore's phases are "verify", "copy" and "write".
type Progress = snapstore.Progress

// Quiet is a Progress that shows nothing.
type Quiet = snapstore.Quiet
