#!/usr/bin/env bash
# make bench: builds hack/bench/benchtool (static) and runs `benchtool all`
# in the test guest (10 GiB of memory), then files its report under
# hack/bench/out/: bench.md, bench.json and the full log.
#   hack/bench/run.sh [-scale N] [-parts convert,restore,write,disks,sweep,gap,diskgap]
#   (-scale N > 1 shrinks every size: a quick trial; -parts runs only some;
#   diskgap: the gap rounds on the virtio disks alone)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=$here/out
mkdir -p "$out"
cd "$top"
CGO_ENABLED=0 go build -trimpath -o "$out/benchtool" ./hack/bench/benchtool
# The write-cost part runs the real CLI (dmsnap activate/deactivate).
CGO_ENABLED=0 go build -trimpath -o "$out/dmsnap" ./cmd/dmsnap
log=$out/bench.log
# The disks part's five virtio disks (device under test, LVM's PV, dmsnap's
# store, dmsnap's managed store, the PV of dmsnap's store on an LVM LV),
# sparse files on the host's own storage.
disks=$(mktemp -d "${TMPDIR:-/var/tmp}/dmsnap-bench-disks.XXXXXX")
trap 'rm -rf "$disks"' EXIT
truncate -s 256M "$disks/dev.img"
truncate -s 640M "$disks/pv.img"
truncate -s 1G "$disks/store.img"
truncate -s 1G "$disks/managed.img"
truncate -s 1032M "$disks/lvpv.img"
set +e
DMSNAP_VM_DISKS="$disks/dev.img $disks/pv.img $disks/store.img $disks/managed.img $disks/lvpv.img" \
DMSNAP_VM_MEM=${DMSNAP_VM_MEM:-10G} DMSNAP_VM_TIMEOUT=${DMSNAP_VM_TIMEOUT:-2400} \
	"$top/hack/vm/run" --file "$out/benchtool:/work/benchtool" --file "$out/dmsnap:/usr/bin/dmsnap" -- /work/benchtool all "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { echo "bench: the guest run failed (exit $rc); see $log" >&2; exit "$rc"; }
sed -n '/@@BENCH-MD-BEGIN@@/,/@@BENCH-MD-END@@/p' "$log" | sed '1d;$d' >"$out/bench.md"
sed -n '/@@BENCH-JSON-BEGIN@@/,/@@BENCH-JSON-END@@/p' "$log" | sed '1d;$d' >"$out/bench.json"
sed -n '/@@BENCH-PROF-BEGIN@@/,/@@BENCH-PROF-END@@/p' "$log" | sed '1d;$d' | base64 -d >"$out/convert.prof" 2>/dev/null || rm -f "$out/convert.prof"
sed -n '/@@BENCH-PROF-RESTORE-BEGIN@@/,/@@BENCH-PROF-RESTORE-END@@/p' "$log" | sed '1d;$d' | base64 -d >"$out/restore.prof" 2>/dev/null || rm -f "$out/restore.prof"
[ -s "$out/bench.md" ] && [ -s "$out/bench.json" ] || { echo "bench: no report in $log" >&2; exit 1; }
echo
echo "bench: report in $out/bench.md and $out/bench.json"
