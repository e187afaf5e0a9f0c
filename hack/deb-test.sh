#!/usr/bin/env bash
# make deb-test: builds the .deb (make deb), checks what it holds, installs
# it with apt on this machine as a user would, checks the installed dmsnap,
# man pages, completions and units (systemd-analyze verify), then removes
# it and checks that nothing of it is left. Refuses to run over a dmsnap
# installed by other means (a /usr/sbin/dmsnap no package owns).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "deb-test: $*" >&2; exit 1; }

deb=$(hack/deb.sh)
[ -f "$deb" ] || fail "make deb gave no package"
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/sbin/dmsnap ./lib/systemd/system/dmsnap-watch.service ./lib/systemd/system/dmsnap-attach@.service ./lib/systemd/system/dmsnap-store@.service \
	./lib/systemd/system/dmsnap-verify.service ./lib/systemd/system/dmsnap-verify.timer \
	./usr/share/man/man8/dmsnap.8.gz ./usr/share/man/man8/dmsnap-restore.8.gz \
	./usr/share/bash-completion/completions/dmsnap ./usr/share/zsh/vendor-completions/_dmsnap \
	./usr/share/fish/vendor_completions.d/dmsnap.fish; do
	grep -qxF "$f" <<<"$contents" || fail "$deb lacks $f"
done
! grep -q '^\./etc/' <<<"$contents" || fail "$deb ships files in /etc (dmsnap writes its udev rule itself)"
[ "$(dpkg-deb -f "$deb" Package)" = dmsnap ] || fail "package name"

if [ -e /usr/sbin/dmsnap ] && ! dpkg -S /usr/sbin/dmsnap >/dev/null 2>&1; then
	fail "/usr/sbin/dmsnap exists and no package owns it: not installing over it"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "./$deb" >/dev/null
trap 'apt-get remove -y -qq dmsnap >/dev/null 2>&1 || true' EXIT

[ "$(dpkg-query -W -f='${Status}' dmsnap)" = "install ok installed" ] || fail "apt did not install dmsnap"
/usr/sbin/dmsnap --version | grep -q "^dmsnap " || fail "installed dmsnap --version"
[ "$(man -w dmsnap-restore)" = /usr/share/man/man8/dmsnap-restore.8.gz ] || fail "man -w dmsnap-restore: $(man -w dmsnap-restore 2>&1)"
man dmsnap-restore 2>/dev/null | grep -q -- "--session" || fail "man dmsnap-restore does not render the restore page"
grep -q -- '--state /var/lib/dmsnap --store /snapshot watch' /lib/systemd/system/dmsnap-watch.service ||
	fail "the watcher's unit does not run the default state directory and store"
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify /lib/systemd/system/dmsnap-watch.service /lib/systemd/system/dmsnap-attach@.service /lib/systemd/system/dmsnap-store@.service /lib/systemd/system/dmsnap-verify.service /lib/systemd/system/dmsnap-verify.timer 2>&1) ||
	fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify: $out"

apt-get remove -y -qq dmsnap >/dev/null
trap - EXIT
for f in /usr/sbin/dmsnap /lib/systemd/system/dmsnap-watch.service /usr/share/man/man8/dmsnap-restore.8.gz; do
	[ ! -e "$f" ] || fail "$f left after apt-get remove"
done
echo "deb-test: $deb installs with apt, works, and removes cleanly"
