#!/usr/bin/env bash
# Runs every fuzz target for an hour (or FUZZ_SECONDS) each, one after
# another: the long local run whose figures go in docs/reliability.md.
#
#   scripts/fuzz-long.sh                 # 7 targets x 1 h
#   FUZZ_SECONDS=300 scripts/fuzz-long.sh path names
#
# Figures: fuzz/target/runs/DATE/summary.txt (see scripts/fuzz.sh).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/fuzz.sh" --seconds "${FUZZ_SECONDS:-3600}" "$@"
