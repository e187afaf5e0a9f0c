package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// The documentation generated from the command tree itself, so that it
// never says other than --help: a man page per command (section 8, system
// administration) and the shell completion scripts. `dmsnap install-files`
// writes them with the units; `make install` and `make deb` call it.

// docFile is one generated file, at its path under the prefix.
type docFile struct {
	path string // relative to the prefix, e.g. share/man/man8/dmsnap.8
	text []byte
}

// manDate is the date the man pages carry: the commit's when the build
// sets SOURCE_DATE_EPOCH (reproducible builds), else today's.
func manDate() *time.Time {
	t := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var secs int64
		if _, err := fmt.Sscan(s, &secs); err == nil {
			t = time.Unix(secs, 0)
		}
	}
	t = t.UTC()
	return &t
}

// docFiles renders the man pages and completion scripts of root's tree,
// for a prefix of /usr (a package) or another (/usr/local: make install),
// where zsh looks in another directory.
func docFiles(root *cobra.Command, prefix string) ([]docFile, error) {
	root.DisableAutoGenTag = true
	dir, err := os.MkdirTemp("", "dmsnap-man-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	hdr := &doc.GenManHeader{Section: "8", Manual: "dmsnap", Source: "dmsnap " + version, Date: manDate()}
	if err := doc.GenManTree(root, hdr, dir); err != nil {
		return nil, fmt.Errorf("man pages: %w", err)
	}
	pages, err := filepath.Glob(filepath.Join(dir, "*.8"))
	if err != nil {
		return nil, err
	}
	var out []docFile
	for _, p := range pages {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		out = append(out, docFile{filepath.Join("share/man/man8", filepath.Base(p)), b})
	}
	var bash, zsh, fish bytes.Buffer
	if err := root.GenBashCompletionV2(&bash, true); err != nil {
		return nil, err
	}
	if err := root.GenZshCompletion(&zsh); err != nil {
		return nil, err
	}
	if err := root.GenFishCompletion(&fish, true); err != nil {
		return nil, err
	}
	zshDir := "share/zsh/site-functions"
	if filepath.Clean(prefix) == "/usr" {
		zshDir = "share/zsh/vendor-completions"
	}
	return append(out,
		docFile{"share/bash-completion/completions/dmsnap", bash.Bytes()},
		docFile{zshDir + "/_dmsnap", zsh.Bytes()},
		docFile{"share/fish/vendor_completions.d/dmsnap.fish", fish.Bytes()}), nil
}
