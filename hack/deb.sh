#!/usr/bin/env bash
# make deb: bin/dmsnap_<version>_<arch>.deb, built with dpkg-deb from the
# release binary. It holds /usr/sbin/dmsnap, the systemd units in
# /lib/systemd/system (run with the default state directory and store), the
# man pages and the bash, zsh and fish completions. It holds no udev rule:
# dmsnap writes /etc/udev/rules.d/90-dmsnap.rules itself at each activate
# and deactivate, for the devices it protects. Removing the package leaves
# the state directory and the store: they hold the sessions.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x bin/dmsnap ] || { echo "deb: bin/dmsnap missing (make build)" >&2; exit 1; }
# A Debian version from the commit: 0~<commit time>.g<hash>, growing with time.
commit=$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S)
hash=$(git rev-parse --short HEAD 2>/dev/null || echo dev)
version="0~${commit}.g${hash}"
arch=$(dpkg --print-architecture)
stage=bin/deb/dmsnap_${version}_${arch}
rm -rf bin/deb && mkdir -p "$stage/DEBIAN"

install -D -m 0755 bin/dmsnap "$stage/usr/sbin/dmsnap"
# install-files writes the units, the rule, the man pages and completions;
# the package's units go where packages put them, the rule is left out.
# The default state directory and store, whatever this machine's settings.
bin/dmsnap --state /var/lib/dmsnap --store /snapshot \
	install-files --binary /usr/sbin/dmsnap --prefix /usr "$stage" >/dev/null
mkdir -p "$stage/lib/systemd/system"
mv "$stage"/etc/systemd/system/*.service "$stage"/etc/systemd/system/*.timer "$stage/lib/systemd/system/"
rm -rf "$stage/etc"
gzip -9n "$stage"/usr/share/man/man8/*.8

cat >"$stage/DEBIAN/control" <<CONTROL
Package: dmsnap
Version: $version
Architecture: $arch
Maintainer: dmsnap developers <dmsnap@localhost>
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Recommends: systemd, udev
Homepage: https://github.com/dmsnap/dmsnap
Description: mount-scoped snapshot sessions for any block device
 dmsnap stacks device-mapper's linear, snapshot-origin and snapshot targets
 over a block device: every mount to unmount is a session whose overwritten
 blocks' pre-images are kept in a store, and dmsnap restore puts the device
 back, byte for byte, to its state before any session.
CONTROL

cat >"$stage/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	echo "dmsnap: start the watcher with: systemctl enable --now dmsnap-watch.service"
	echo "dmsnap: verify the store every week with: systemctl enable --now dmsnap-verify.timer"
fi
SCRIPT
cat >"$stage/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
# The watcher stops at a step it can resume from (TimeoutStopSec).
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl stop dmsnap-watch.service dmsnap-verify.timer || true
fi
SCRIPT
cat >"$stage/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
SCRIPT
chmod 0755 "$stage"/DEBIAN/postinst "$stage"/DEBIAN/prerm "$stage"/DEBIAN/postrm

dpkg-deb --root-owner-group -Zxz --build "$stage" "bin/dmsnap_${version}_${arch}.deb" >/dev/null
rm -rf bin/deb
echo "bin/dmsnap_${version}_${arch}.deb"
