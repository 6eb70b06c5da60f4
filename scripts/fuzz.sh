#!/usr/bin/env bash
# Builds Berth's cargo-fuzz targets (fuzz/) and runs each for a bounded
# number of inputs or a time, then prints one line of figures per target.
#
#   scripts/fuzz.sh --runs 20000              # every target, 20,000 inputs each (scripts/test)
#   scripts/fuzz.sh --seconds 300 path jwt    # two targets, 5 minutes each
#   scripts/fuzz-long.sh                      # every target for an hour each
#
# Needs the nightly toolchain and cargo-fuzz; both are installed when missing
# (`rustup toolchain install nightly`, `cargo install cargo-fuzz --locked`).
# Targets run one after another, one process each (the machine is shared).
#
# The checked-in seeds in fuzz/corpus/TARGET are read, never written: what a
# run finds goes to OUT/corpus/TARGET (OUT: $BERTH_FUZZ_OUT, default
# fuzz/target/runs/DATE), crashes to OUT/artifacts/TARGET/, each target's
# libFuzzer log to OUT/TARGET.log, and the figures to OUT/summary.txt.
#
# Exit status: non-zero when a target found a crash, a panic, a leak, a
# timeout or an out-of-memory (its input is in OUT/artifacts/TARGET/; replay
# it with `cargo +nightly fuzz run TARGET FILE`, then make it a regression
# test in the crate whose code failed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  case ":$PATH:" in
    *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
    *) export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;;
  esac
fi

ALL_TARGETS=(path names manifest ranges accept token_request jwt)
limit=() targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --runs) limit=(-runs="$2"); shift 2 ;;
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#limit[@]} -gt 0 ] || { echo "fuzz.sh: give --runs N or --seconds S" >&2; exit 2; }
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

say() { printf 'fuzz.sh: %s\n' "$*" >&2; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked >&2
fi

OUT=${BERTH_FUZZ_OUT:-$ROOT/fuzz/target/runs/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
say "building the targets (nightly, AddressSanitizer, debug assertions)"
cargo +nightly fuzz build >&2

failed=0
: >"$OUT/summary.txt"
printf '%-14s %12s %10s %8s %8s %8s  %s\n' target execs exec/s cov ft corpus result | tee -a "$OUT/summary.txt"
for t in "${targets[@]}"; do
  [ -d "$ROOT/fuzz/corpus/$t" ] || { say "no seed corpus fuzz/corpus/$t"; exit 2; }
  mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
  rc=0
  cargo +nightly fuzz run "$t" "$OUT/corpus/$t" "$ROOT/fuzz/corpus/$t" -- \
    "${limit[@]}" -artifact_prefix="$OUT/artifacts/$t/" -print_final_stats=1 \
    -rss_limit_mb=2048 -timeout=10 >"$OUT/$t.log" 2>&1 || rc=$?
  # The last libFuzzer status line: "#N DONE cov: C ft: F corp: U/S exec/s: E rss: R".
  status=$(grep -E '^#[0-9]+' "$OUT/$t.log" | tail -n 1 || true)
  field() { sed -nE "s|.*[ ]$1: ([0-9]+).*|\1|p" <<<"$status"; }
  stat() { sed -nE "s/^stat::$1: *([0-9]+)/\1/p" "$OUT/$t.log" | tail -n 1; }
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$status")
  if [ "$rc" -eq 0 ]; then result=ok; else result="FAILED (exit $rc, see $OUT/$t.log)"; failed=1; fi
  crashes=$(find "$OUT/artifacts/$t" -type f | wc -l)
  [ "$crashes" -eq 0 ] || result="$result, $crashes artifacts in $OUT/artifacts/$t"
  printf '%-14s %12s %10s %8s %8s %8s  %s\n' "$t" "$(stat number_of_executed_units)" \
    "$(stat average_exec_per_sec)" "$(field cov)" "$(field ft)" \
    "${corp:-?}" "$result" | tee -a "$OUT/summary.txt"
done
say "logs, corpora and artifacts in $OUT"
exit "$failed"
