#!/usr/bin/env bash
# One-time machine setup + build: system packages (as root), fusectl, npm deps, addon, TS.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for p in fuse3 libfuse3-dev pkg-config g++ make python3 clang-format; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${need_pkgs[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

# fusectl: FUSE connection control (tests abort stuck mounts through it).
if [ -d /sys/fs/fuse/connections ] && ! mountpoint -q /sys/fs/fuse/connections; then
  mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || echo "setup: warning: cannot mount fusectl" >&2
fi

npm ci --no-audit --no-fund
npm run build
