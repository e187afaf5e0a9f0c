#!/usr/bin/env bash
# Runs every fuzz target of the module for a short time each (CI) or as long
# as asked: hack/fuzz.sh 10s | 5m
set -euo pipefail
t=${1:-10s}
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
