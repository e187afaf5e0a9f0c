// Command dmsnap gives block devices mount-scoped snapshot sessions through
// the kernel's device-mapper. See README.md.
//
// main only parses the command line and maps errors to exit codes; the work
// is done by the dm, snapstore, session and restore packages.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
