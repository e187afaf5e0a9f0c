#!/usr/bin/env bash
# Installs the Debian packages the host tests need, only those missing:
# bash-completion (a real bash completes a session ID), man-db and
# groff-base (the generated man pages render), systemd (systemd-analyze
# verifies the generated units; installing it starts nothing).
set -euo pipefail
pkgs=(bash-completion man-db groff-base systemd)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "host deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
