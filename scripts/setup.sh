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

# Python: a project-local virtualenv with the exact pins of test/py/requirements.txt — real
# ZODB, ZEO and pytest for the cross-language tests. pip checks the pins again on every run
# (cheap when satisfied); a failed install fails set-up.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || { echo "setup: cannot create the virtualenv .venv (python3 -m venv)" >&2; exit 1; }
fi
.venv/bin/pip install -q --disable-pip-version-check -r test/py/requirements.txt || { echo "setup: pip install -r test/py/requirements.txt failed" >&2; exit 1; }

npm ci --no-audit --no-fund
npm run build
