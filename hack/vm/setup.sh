#!/usr/bin/env bash
# Installs what the VM harness needs and fetches the guest kernel.
#
# Debian packages are installed only when missing. The kernel is Debian's
# linux-image-cloud-amd64 (it ships dm-mod, dm-snapshot, loop, xfs, btrfs as
# modules): the versioned package it depends on is downloaded into the cache
# and unpacked with dpkg-deb -x. It is never installed on the host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${DMSNAP_VM_CACHE:-$here/.cache}
mkdir -p "$cache"

pkgs=(qemu-system-x86 qemu-utils busybox-static cpio kmod e2fsprogs xfsprogs btrfs-progs
      dosfstools util-linux binutils fio lvm2 thin-provisioning-tools ca-certificates tmux)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "vm setup: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

kdir=$cache/kernel
if [ ! -f "$kdir/.done" ]; then
	# apt-cache needs a fresh list on a new machine.
	pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	if [ -z "$pkg" ]; then
		apt-get update -qq >/dev/null
		pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	fi
	[ -n "$pkg" ] || { echo "vm setup: cannot resolve the kernel package of linux-image-cloud-amd64" >&2; exit 1; }
	echo "vm setup: fetching $pkg" >&2
	rm -rf "$kdir" "$cache/deb"
	mkdir -p "$cache/deb" "$kdir"
	(cd "$cache/deb" && apt-get download -qq "$pkg" >/dev/null)
	dpkg-deb -x "$cache"/deb/*.deb "$kdir"
	rm -rf "$cache/deb"
	# The package's modules.dep is made by its postinst; make it here.
	kver=$(ls "$kdir/lib/modules" | head -n1)
	depmod -b "$kdir" "$kver"
	touch "$kdir/.done"
fi
