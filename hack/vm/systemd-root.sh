#!/usr/bin/env bash
# Builds the root disk of a guest that boots systemd (for the tests of the
# udev rule and the units: cmd/dmsnap/systemd_host_test.go): the base
# initramfs's files (busybox, the host tools, the kernel modules), Debian
# 12's systemd and udev (downloaded, unpacked with dpkg-deb -x, never
# installed here), the host's libraries they link, util-linux's mount and
# dmsetup's udev rules (as a Debian system with lvm2 has them), and a unit
# that runs the test's script once the system is up. The image is cached;
# a test boots a copy of it (the root changes from one boot to the next,
# as a real machine's does).
#
# The guest boots through init-root (put in by hack/vm/run with
# DMSNAP_VM_INIT=/init-root): it loads the modules, mounts /dev/vda (this
# image) and hands over to systemd.
#
# Usage: systemd-root.sh  -> prints the path of the image
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${DMSNAP_VM_CACHE:-$here/.cache}
base=$(flock "$cache/.lock" "$here/mkinitramfs.sh")
out=$cache/systemd-root.img
pkgs=(systemd libsystemd-shared libsystemd0 udev libudev1)

stamp=$( { cat "$0" "$base.stamp"; apt-cache policy "${pkgs[@]}" 2>/dev/null | grep Candidate; } | sha256sum | cut -c1-16)
if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$out"
	exit 0
fi

work=$(mktemp -d "$cache/sdroot.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root" "$work/deb"
(cd "$root" && gzip -dc "$base" | cpio -id --quiet)
rm -f "$root/init"

(cd "$work/deb" && apt-get download -qq "${pkgs[@]}" >/dev/null 2>&1) || {
	apt-get update -qq >/dev/null
	(cd "$work/deb" && apt-get download -qq "${pkgs[@]}" >/dev/null)
}
# Debian 12 is merged-/usr: /bin, /sbin and /lib are links into /usr.
for d in bin sbin lib lib64; do
	if [ -d "$root/$d" ] && [ ! -L "$root/$d" ]; then
		mkdir -p "$root/usr/$d"
		cp -a "$root/$d/." "$root/usr/$d/"
		rm -rf "${root:?}/$d"
	fi
	mkdir -p "$root/usr/$d"
	ln -s "usr/$d" "$root/$d"
done
# Bookworm's packages still ship /lib and /bin: unpack each apart and move
# its files under /usr.
for deb in "$work"/deb/*.deb; do
	rm -rf "$work/x"
	dpkg-deb -x "$deb" "$work/x"
	for d in bin sbin lib lib64; do
		[ -d "$work/x/$d" ] || continue
		cp -a "$work/x/$d/." "$root/usr/$d/"
		rm -rf "${work:?}/x/$d"
	done
	cp -a "$work/x/." "$root/"
done

# The host's mount and dmsetup (systemd mounts with util-linux's mount;
# dmsetup's rules name /dev/mapper devices for systemd), then every shared
# library the guest's programs need that it does not have.
for f in /usr/bin/mount /usr/bin/umount /usr/sbin/dmsetup; do
	[ -e "$f" ] && rm -f "$root$f" && cp -L "$f" "$root$f"
done
for r in 10-dm.rules 13-dm-disk.rules 55-dm.rules 60-persistent-storage-dm.rules 95-dm-notify.rules; do
	[ -e "/usr/lib/udev/rules.d/$r" ] && cp "/usr/lib/udev/rules.d/$r" "$root/usr/lib/udev/rules.d/"
done
export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu/systemd:$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/systemd
find "$root/usr" -type f -perm -u+x -o -type f -name '*.so*' | while read -r f; do
	ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' || true
done | sort -u | while read -r lib; do
	case $lib in "$root"/*) continue ;; esac
	rel=/usr${lib#/usr}
	[ -e "$root$rel" ] && continue
	mkdir -p "$root$(dirname "$rel")"
	cp -L "$lib" "$root$rel"
done
unset LD_LIBRARY_PATH

# A machine that has booted before: an identity, a hostname, no first-boot
# questions, no login prompts, multi-user.
echo 0123456789abcdef0123456789abcdef >"$root/etc/machine-id"
echo dmsnap-vm >"$root/etc/hostname"
: >"$root/etc/fstab"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
messagebus:x:100:101::/nonexistent:/usr/sbin/nologin
systemd-journal:x:101:102::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
messagebus:x:101:
systemd-journal:x:102:
tty:x:5:
disk:x:6:
kmem:x:15:
dialout:x:20:
cdrom:x:24:
tape:x:26:
audio:x:29:
video:x:44:
input:x:104:
kvm:x:105:
render:x:106:
sgx:x:107:
utmp:x:43:
nogroup:x:65534:
EOF
ln -sf /usr/lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
for u in serial-getty@ttyS0.service getty@tty1.service getty-static.service systemd-firstboot.service \
	systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
	systemd-logind.service dbus.service dbus.socket; do
	ln -sf /dev/null "$root/etc/systemd/system/$u"
done
mkdir -p "$root/root" "$root/var/tmp" "$root/work" "$root/etc/udev/rules.d" "$root/usr/local/sbin"
ln -sf /proc/self/mounts "$root/etc/mtab"

# The test's script: /work/run.sh (hack/vm/run's, copied here by
# init-root), its output on the serial console, then the exit marker
# hack/vm/run reads, and a power-off.
cat >"$root/usr/local/sbin/vm-run-test" <<'EOF'
#!/bin/sh
sh /work/run.sh
rc=$?
if [ "$rc" != 0 ]; then
	echo "--- failed units ---"
	systemctl --failed --no-pager --no-legend
	echo "--- journal (last 60 lines) ---"
	journalctl -b --no-pager | tail -n 60
fi
sync
echo "@@DMSNAP-VM-EXIT $rc@@"
systemctl poweroff --no-block
EOF
chmod 755 "$root/usr/local/sbin/vm-run-test"
cat >"$root/etc/systemd/system/vm-run-test.service" <<'EOF'
[Unit]
Description=the VM test's script
After=multi-user.target

[Service]
Type=oneshot
Environment=SYSTEMD_PAGER=cat PAGER=cat SYSTEMD_COLORS=0
ExecStart=/usr/local/sbin/vm-run-test
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../vm-run-test.service "$root/etc/systemd/system/multi-user.target.wants/vm-run-test.service"

rm -f "$out.tmp"
mke2fs -q -t ext4 -L vmroot -d "$root" "$out.tmp" 2G >/dev/null
mv "$out.tmp" "$out"
echo "$stamp" >"$out.stamp"
echo "$out"
