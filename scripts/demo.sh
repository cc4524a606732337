#!/usr/bin/env bash
# Demo: create a small ZODB FileStorage with our writer and show what is in it.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/wcfs-demo.XXXXXX)
node bin/wcfs.js zodb demo "$dir/data.fs"
node bin/wcfs.js zodb info "$dir/data.fs"
echo
echo "block 0 of file a (first 64 bytes):"
node bin/wcfs.js zodb cat "$dir/data.fs" 1 0 | head -c 64 | od -An -tx1
echo "database left in $dir"
