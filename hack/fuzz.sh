#!/usr/bin/env bash
# Runs every fuzz target of the module for a fixed number of inputs each (CI)
# or as long as asked: hack/fuzz.sh 10000x | 5m
#
# CI uses a count, not a duration: with a duration Go 1.26's fuzz coordinator
# can report a spurious "context deadline exceeded" when the time runs out
# while a worker is mid-input (golang/go#75804, fixed in Go 1.27).
set -euo pipefail
t=${1:-10000x}
cd "$(dirname "$0")/.."
n=0
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "fuzz: $pkg $f ($t)"
		go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg"
		n=$((n + 1))
	done
done
echo "fuzz: $n targets run"
