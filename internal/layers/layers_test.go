package layers

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/dmsnap/dmsnap/"

// rank is each package's layer; a package imports only packages of a lower
// layer, or of its own where sameLayer allows it (internal packages may
// import each other).
func rank(pkg string) int {
	switch {
	case strings.HasPrefix(pkg, "internal/"):
		return 1
	case pkg == "dm", pkg == "dm/dmtest", pkg == "snapstore", pkg == "snapstore/snapstoretest":
		return 2
	case pkg == "storedev", pkg == "storedev/storedevtest":
		return 3
	case pkg == "restore", pkg == "session", pkg == "session/system", pkg == "session/sessiontest":
		return 4
	case pkg == "rollback":
		return 5
	case pkg == "cmd/dmsnap", strings.HasPrefix(pkg, "hack/"):
		return 6
	}
	return 0
}

// sameLayer lists the imports allowed within a layer: the adapters and
// fakes of a package import it.
var sameLayer = map[string]bool{
	"session/system -> session":            true,
	"session/sessiontest -> session":       true,
	"dm/dmtest -> dm":                      true,
	"snapstore/snapstoretest -> snapstore": true,
	"storedev/storedevtest -> storedev":    true,
}

func TestImportsGoDown(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		pkg := strings.TrimPrefix(f[0], module)
		if pkg == "internal/layers" {
			continue
		}
		r := rank(pkg)
		if r == 0 {
			t.Errorf("%s has no layer: add it to rank (and to docs/architecture.md)", pkg)
			continue
		}
		n++
		for _, imp := range f[1:] {
			dep, ok := strings.CutPrefix(imp, module)
			if !ok {
				continue
			}
			d := rank(dep)
			if d > r || d == r && r > 1 && !sameLayer[pkg+" -> "+dep] {
				t.Errorf("%s (layer %d) imports %s (layer %d)", pkg, r, dep, d)
			}
		}
	}
	if n < 20 {
		t.Fatalf("go list gave %d packages: %s", n, out)
	}
}
