#!/usr/bin/env bash
# Quick start: set the machine up (packages, build) and run the main job: serve a FileStorage
# database with wcfs and show isolation working (scripts/demo.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node scripts/demo.mjs
