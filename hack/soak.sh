#!/usr/bin/env bash
# The long tier (make soak): the byte-exact matrix over every filesystem ×
# every workload, SOAK_ROUNDS rounds with a random seed (printed; replay with
# DMSNAP_SEED=...), the crash test at every crash point SOAK_ROUNDS times
# (restore points included), the bad-input sweeps, and SOAK_POWERCUTS guest
# power cuts. It prints the counts the reliability note needs and exits 1 if
# anything failed.
#
#   hack/soak.sh            # SOAK_ROUNDS=3 SOAK_POWERCUTS=3
#   SOAK_ROUNDS=1 SOAK_POWERCUTS=1 hack/soak.sh   # a shortened run
#   SOAK_MATRIX=fast: the matrix's fast-tier cases only (default full)
#   SOAK_STORES="ext4": the store filesystems the matrix runs on (default ext4 xfs tmpfs)
set -uo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=0
rounds=${SOAK_ROUNDS:-3}
powercuts=${SOAK_POWERCUTS:-3}
seed=${DMSNAP_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
log=$(mktemp "${TMPDIR:-/tmp}/dmsnap-soak.XXXXXX")
echo "soak: rounds $rounds, power cuts $powercuts, seed $seed (replay: DMSNAP_SEED=$seed), log $log"
make build build-test vm-setup >/dev/null || exit 1
start=$(date +%s)
fail=0

# One guest per test, each allowed as long as the run needs (the harness's
# default is 30 minutes).
export DMSNAP_VM_TIMEOUT=${DMSNAP_VM_TIMEOUT:-36000}
# The matrix runs once per store filesystem (SOAK_STORES): ext4 and xfs,
# where the COW files are partly mapped to the store's device, and tmpfs,
# where they never are.
for t in TestMatrix TestCrashpoints TestBadInputDevices; do
	stores=ext4
	[ "$t" = TestMatrix ] && stores=${SOAK_STORES:-ext4 xfs tmpfs}
	for store in $stores; do
		echo "soak: $t (store: $store) ..."
		DMSNAP_VM_ENV="DMSNAP_MATRIX=${SOAK_MATRIX:-full} DMSNAP_MATRIX_ROUNDS=$rounds DMSNAP_SEED=$seed DMSNAP_CRASH_ROUNDS=$rounds DMSNAP_CRASH_ALL=1 DMSNAP_TEST_STORE_FS=$store" \
			go test -count=1 -timeout 600m -tags vm,crashpoints -exec "$PWD/hack/vm/exec" -v -run "^$t\$" ./cmd/dmsnap/ >>"$log" 2>&1 || fail=1
	done
done
echo "soak: host sweeps and power cuts ..."
go test -count=1 -v -run '^(TestBadSessionIDs|TestInsecureStoreRefused|TestStateChangesWaitForTheLock|TestInvalidSessionIsNoRestorePoint|TestPrune.*|TestCheckStore)$' \
	./cmd/dmsnap/ ./session/ >>"$log" 2>&1 || fail=1
for i in $(seq "$powercuts"); do
	go test -count=1 -tags vmhost -v -run '^TestPowerCut$' ./cmd/dmsnap/ >>"$log" 2>&1 || fail=1
done

sum() { grep -o "soak-count .*" "$log" | grep -o "$1 [0-9]*" | awk '{s += $2} END {print s + 0}'; }
echo "soak: done in $(( $(date +%s) - start ))s"
echo "  matrix cases:        $(sum matrix-cases) ($(grep -o 'soak-count matrix-cases .*' "$log" | sed 's/.*matrix-failed [0-9]* //' | tr '\n' ' '))"
echo "  matrix failures:     $(sum matrix-failed)"
echo "  crashes injected:    $(sum crashes) (restores checked after them: $(sum restores-after-crash))"
echo "  power cuts:          $(sum power-cuts) (fsync-acknowledged records checked: $(sum acked-records))"
echo "  bad inputs tried:    $(sum bad-inputs)"
echo "  failed tests:        $(grep -c -- '--- FAIL' "$log")"
grep -- '--- FAIL' "$log" | sed 's/^/    /'
grep -E 'sha256 .*before' "$log" | sed 's/^/  mismatch: /'
if [ "$fail" != 0 ]; then
	echo "soak: FAILED (see $log)"
	exit 1
fi
echo "soak: ok"
