// Command dmsnap gives block devices mount-scoped snapshot sessions through
// the kernel's device-mapper. See README.md and DESIGN.md.
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("dmsnap", version)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: dmsnap version")
	os.Exit(2)
}
