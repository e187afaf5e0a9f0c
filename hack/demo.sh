#!/bin/sh
# The dmsnap demo (make demo runs it in the test guest, busybox sh, as root):
# one mount session on an ext4 loop device, then a restore, and the proof —
# the SHA-256 of the whole device after the restore equals the one taken
# before the session.
set -e

STORE=/snapshot
STATE=/tmp/state
MNT=/mnt/demo
IMG=/tmp/demo-disk.img
dmsnap() { /usr/bin/dmsnap --store "$STORE" --state "$STATE" "$@"; }
heading() { printf '\n=== %s ===\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

heading "0. The store: /snapshot on an ext4 filesystem of its own, as on a server"
dd if=/dev/zero of=/tmp/store.img bs=1M count=0 seek=1024 2>/dev/null
SLOOP=$(losetup -f)
losetup "$SLOOP" /tmp/store.img
mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=1,lazy_journal_init=1 "$SLOOP"
mkdir -p "$STORE"
mount -o noinit_itable "$SLOOP" "$STORE"
echo "store $STORE on $SLOOP (ext4)"

heading "1. A 64 MiB ext4 filesystem on a loop device"
rm -f "$IMG"
dd if=/dev/zero of="$IMG" bs=1M count=0 seek=64 2>/dev/null
LOOP=$(losetup -f)
losetup "$LOOP" "$IMG"
mkfs.ext4 -q -F "$LOOP"
NAME=$(basename "$LOOP")
ORIGIN=/dev/mapper/dmsnap-$NAME
BEFORE=$(sha256sum "$LOOP" | cut -d' ' -f1)
echo "device $LOOP, SHA-256 before the session: $BEFORE"

heading "2. Activate it and start the watcher"
show dmsnap activate "$LOOP"
# The armed session's COW: its start, written ahead with zeros at arming,
# goes straight to the store's block device (README, "How it works").
show dmsnap status "$NAME"
dmsnap watch >/tmp/watch.log 2>&1 &
WATCH=$!
cleanup() {
	kill "$WATCH" 2>/dev/null || true
	umount "$MNT" 2>/dev/null || true
}
trap cleanup EXIT
# Let the watcher reconcile and start listening before the first mount.
sleep 2

heading "3. A session: mount $ORIGIN, write and overwrite files, unmount"
mkdir -p "$MNT"
show mount "$ORIGIN" "$MNT"
sleep 1
dd if=/dev/urandom of="$MNT/random.bin" bs=64k count=64 2>/dev/null
seq 1 20000 >"$MNT/numbers.txt"
echo "first version" >"$MNT/notes.txt"
sync
echo "second version, overwritten" >"$MNT/notes.txt"
dd if=/dev/urandom of="$MNT/random.bin" bs=64k count=32 conv=notrunc 2>/dev/null
rm "$MNT/numbers.txt"
sync
ls -l "$MNT"
show umount "$MNT"

heading "4. Wait for the watcher to close the session"
i=0
SESSION=
while [ -z "$SESSION" ]; do
	for m in "$STORE/${NAME}"_*/meta.json; do
		[ -f "$m" ] && SESSION=$(basename "$(dirname "$m")") && break
	done
	[ -n "$SESSION" ] && break
	i=$((i + 1))
	if [ "$i" -ge 60 ]; then
		echo "the session did not close within 60 s; watcher log:" >&2
		cat /tmp/watch.log >&2
		exit 1
	fi
	sleep 1
done
echo "closed session: $SESSION"
show dmsnap sessions list "$NAME"

heading "5. Restore the device to its state before $SESSION"
show dmsnap restore "$NAME" --session "$SESSION" --yes
AFTER=$(sha256sum "$ORIGIN" | cut -d' ' -f1)

heading "6. The proof"
echo "SHA-256 before the session: $BEFORE"
echo "SHA-256 after the restore:  $AFTER"
if [ "$BEFORE" != "$AFTER" ]; then
	echo "MISMATCH: the restore did not give back the device's bytes" >&2
	exit 1
fi
echo "equal: the device is byte for byte as it was before the session"

kill "$WATCH" 2>/dev/null || true
wait "$WATCH" 2>/dev/null || true
dmsnap deactivate "$NAME" >/dev/null
losetup -d "$LOOP"
umount "$STORE"
losetup -d "$SLOOP"
