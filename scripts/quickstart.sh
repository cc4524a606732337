#!/usr/bin/env bash
# Quick start: set the machine up (packages, build) and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/demo.sh
