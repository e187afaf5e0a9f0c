package dm

import "github.com/dmsnap/dmsnap/internal/filemap"

// Mapper is the device-mapper surface the stack logic needs. System is the
// real kernel; dm/dmtest.Fake is an in-memory stand-in with the same rules
// (names unique, tables hold their devices, busy devices cannot be removed)
// so that the ordering and undo logic here and the session logic above can
// be tested without root.
type Mapper interface {
	Create(name, uuid string) (DeviceInfo, error)
	Load(name string, targets ...Target) error
	ClearTable(name string) error
	Suspend(name string) error
	Resume(name string) error
	Remove(name string) error
	Info(name string) (DeviceInfo, error)
	Status(name string) ([]TargetSpec, error)
	Table(name string) ([]TargetSpec, error)
	List() ([]ListItem, error)

	// Inspect, CheckUnused and ZeroCOWHeader work on block device paths.
	Inspect(path string) (BlockDevice, error)
	CheckUnused(path string) (BlockDevice, error)
	ZeroCOWHeader(path string) error
}

// Loops is the loop device surface the session logic needs, with the files
// behind loop devices: MapFile, PinFile and UnpinFile (AttachCOW, GrowCOW).
type Loops interface {
	AttachLoop(file string, opts LoopOptions) (*Loop, error)
	DetachLoop(path string) error
	SetLoopCapacity(path string) (uint64, error)
	FindLoop(file string) (*Loop, error)
	MapFile(path string) (FileMap, error)
	PinFile(path string) error
	UnpinFile(path string) error
	// FileUsers lists the loop devices bound to a file and the tables that
	// map its blocks (FileUsers).
	FileUsers(path string) ([]string, error)
}

// Kernel is everything dmsnap asks of the kernel.
type Kernel interface {
	Mapper
	Loops
}

// System is the running kernel. Its zero value is ready to use; each method
// is the package function of the same name.
type System struct{}

var _ Kernel = System{}

func (System) Create(name, uuid string) (DeviceInfo, error)            { return Create(name, uuid) }
func (System) Load(name string, targets ...Target) error               { return Load(name, targets...) }
func (System) ClearTable(name string) error                            { return ClearTable(name) }
func (System) Suspend(name string) error                               { return Suspend(name) }
func (System) Resume(name string) error                                { return Resume(name) }
func (System) Remove(name string) error                                { return Remove(name) }
func (System) Info(name string) (DeviceInfo, error)                    { return Info(name) }
func (System) Status(name string) ([]TargetSpec, error)                { return Status(name) }
func (System) Table(name string) ([]TargetSpec, error)                 { return Table(name) }
func (System) List() ([]ListItem, error)                               { return List() }
func (System) Inspect(path string) (BlockDevice, error)                { return Inspect(path) }
func (System) CheckUnused(path string) (BlockDevice, error)            { return CheckUnused(path) }
func (System) ZeroCOWHeader(path string) error                         { return ZeroCOWHeader(path) }
func (System) AttachLoop(file string, opts LoopOptions) (*Loop, error) { return AttachLoop(file, opts) }
func (System) DetachLoop(path string) error                            { return DetachLoop(path) }
func (System) SetLoopCapacity(path string) (uint64, error)             { return SetLoopCapacity(path) }
func (System) FindLoop(file string) (*Loop, error)                     { return FindLoop(file) }
func (System) MapFile(path string) (FileMap, error)                    { return MapFile(path) }
func (System) LoopOverDevice(d Dev) bool                               { return LoopOverDevice(d) }
func (System) UnpinFile(path string) error                             { return filemap.UnpinPath(path) }
func (System) PinFile(path string) error                               { return PinFile(path) }
func (System) FileUsers(path string) ([]string, error)                 { return FileUsers(path) }
