#!/usr/bin/env bash
# Builds the base initramfs of the test guest: busybox, the kernel modules
# dmsnap needs (with their dependencies, in load order), and the host tools the
# tests use, copied in with their shared libraries. The result is cached and
# rebuilt only when this script, init or the kernel change.
#
# Usage: mkinitramfs.sh  -> prints the path of the base archive
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${DMSNAP_VM_CACHE:-$here/.cache}
kroot=$cache/kernel
kver=$(ls "$kroot/lib/modules" | head -n1)
out=$cache/base.cpio.gz

# Tools copied from the host into the guest (first found path wins).
tools=(mke2fs mkfs.ext4 mkfs.ext2 e2fsck fsck.ext4 fsck.ext2 tune2fs dumpe2fs debugfs
	mkfs.xfs xfs_repair xfs_db xfs_io mkfs.btrfs btrfs btrfsck
	blkid blkdiscard fstrim fio stress-ng dbench
	lvm pvcreate vgcreate lvcreate lvs thin_check tmux)
mods=(dm-mod dm-bufio dm-snapshot dm-thin-pool loop xfs btrfs xxhash_generic
	virtio_pci virtio_blk crc32c-intel)

stamp=$( { cat "$0" "$here/init"; echo "$kver"; for t in "${tools[@]}"; do command -v "$t" || true; done; } | sha256sum | cut -c1-16)
if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$out"
	exit 0
fi

root=$(mktemp -d "$cache/root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,tmp,run,mnt,work,var/lib,usr/share}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
	[ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Copy a binary and every shared library it needs, keeping their paths.
copy_with_libs() {
	local f=$1 dest=$2
	mkdir -p "$root$(dirname "$dest")"
	cp -L "$f" "$root$dest"
	ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | while read -r lib; do
		[ -e "$root$lib" ] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}
for t in "${tools[@]}"; do
	p=$(command -v "$t" || true)
	[ -n "$p" ] || continue
	# Host tools replace busybox applets of the same name (fuller options).
	rm -f "$root/bin/$t"
	copy_with_libs "$p" "/usr/sbin/$t"
done
# tmux (the progress test's 80-column terminal) reads terminfo and wants a
# UTF-8 locale (glibc's C.UTF-8).
[ -d /lib/terminfo ] && cp -r /lib/terminfo "$root/lib/"
[ -d /usr/lib/locale/C.utf8 ] && mkdir -p "$root/usr/lib/locale" && cp -r /usr/lib/locale/C.utf8 "$root/usr/lib/locale/"
# dbench reads its load file from /usr/share/dbench.
[ -d /usr/share/dbench ] && cp -r /usr/share/dbench "$root/usr/share/"
mkdir -p "$root/etc/lvm" && printf 'global {\n use_lvmetad = 0\n}\nactivation {\n udev_sync = 0\n udev_rules = 0\n}\n' >"$root/etc/lvm/lvm.conf"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

# Modules with their dependencies, in load order.
: >"$root/etc/modules.load"
for m in "${mods[@]}"; do
	modprobe -d "$kroot" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
	rel=${ko#"$kroot"}
	rel=/${rel#/./}
	rel=${rel#/.}
	mkdir -p "$root$(dirname "$rel")"
	cp "$ko" "$root$rel"
	echo "$rel" >>"$root/etc/modules.load"
done

cp "$here/init" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
echo "$stamp" >"$out.stamp"
echo "$out"
