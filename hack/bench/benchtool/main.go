// Command benchtool measures dmsnap's session conversion and restore
// against cp(1) and dd(1) in the same run (make bench). It runs inside the
// test guest (hack/bench/run.sh boots it): `benchtool all` sets up the
// stores, runs each measured step as a child process (benchtool convert,
// benchtool restore, cp, dd) so its wall time and peak memory (wait4's
// rusage) are its own, and prints a markdown report, with the same figures
// as JSON between markers for run.sh to file.
//
// Subcommands:
//
//	all [-scale N]                 the whole benchmark (guest only, as root)
//	session -store DIR -name NAME -armed UNIX -dev-size BYTES -from CHUNK -to CHUNK -seed N
//	                               make a closed session whose cow.img CowWriter wrote
//	convert DIR                    snapstore.Convert one session
//	restore -target DEV [-skip-verify] [-cpuprofile FILE] DIR...
//	                               restore.Plan.Apply of the sessions (oldest first) to DEV
//	cpu                            CRC-32C and SHA-256 speed over memory (the CPU part of a conversion)
package main

import (
	"fmt"
	"os"

	"github.com/dmsnap/dmsnap/internal/crc32c"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtool all|session|convert|restore ...")
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	var anon *anonPeak
	if os.Args[1] != "all" {
		anon = sampleAnon()
	}
	switch os.Args[1] {
	case "all":
		err = runAll(args)
	case "session":
		err = runSession(args)
	case "convert":
		err = runConvert(args)
	case "restore":
		err = runRestore(args)
	case "cpu":
		d, std := crcSpeed()
		fmt.Printf("crc32c %.0f MB/s (%s; hash/crc32 %.0f MB/s), sha256 %.0f MB/s\n", d, crc32c.Chosen(), std, shaSpeed())
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if os.Args[1] != "all" {
		reportHWM()
		anon.report()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
