#!/usr/bin/env bash
# The yardstick, side by side: the reference registry (Debian's docker-registry,
# CNCF distribution 2.8) and Berth, measured by the shared bench.py on this
# machine in one run, one after the other (never both at once).
#
#   scripts/bench.sh [--no-build] [--only-reference | --only-berth] [BENCH.PY ARGS...]
#
#   --no-build         use the existing release binary (default: cargo build --release -p berth-server)
#   --only-reference   run only the reference registry (no build, no Berth run)
#   --only-berth       run only Berth
#   anything else      passed to bench.py, e.g. --quick, --tests a,b,d, --runs 5
#
# Results go to bench-results/ (git-ignored):
#   openssl-sha256.txt            `openssl speed -evp sha256 -seconds 3` (the 16384-byte column
#                                 bounds any push that verifies digests)
#   reference.json / .txt         bench.py against docker-registry (--pid)
#   berth.json / .txt             bench.py against Berth (--start-cmd, so startup time is measured)
#   compare.md                    scripts/bench-compare.py berth.json reference.json
#   run-info.txt                  what was run, where, on which commit
#
# All data (registry storage, bench.py's generated blobs) lives in one temp dir
# on the same disk as the repository, removed at the end. A full run takes
# about 15 minutes and writes about 8 GiB per registry. Environment:
#   BERTH_BIN       binary to benchmark (default: target/release/berth)
#   BENCH_TMPDIR    where to make the temp dir (default: $TMPDIR or /tmp if on the
#                   repository's disk, else target/)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_PY="$ROOT/../shared/bench/bench.py"
OUT="$ROOT/bench-results"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
log() { printf '\n### [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'bench.sh: ERROR: %s\n' "$*" >&2; exit 1; }

ARGS="$*"
build=1 run_ref=1 run_berth=1 quick=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --only-reference) run_berth=0 build=0 ;;
    --only-berth) run_ref=0 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *)
      [ "$1" = --quick ] && quick=1
      extra+=("$1")
      ;;
  esac
  shift
done
[ "$run_ref" = 1 ] || [ "$run_berth" = 1 ] || die "--only-reference and --only-berth exclude each other"

[ -f "$BENCH_PY" ] || die "bench.py not found at $BENCH_PY (expected shared/ beside the repository)"
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  case ":$PATH:" in
    *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
    *) export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;;
  esac
fi
for c in python3 curl wrk openssl docker-registry; do
  if ! command -v "$c" >/dev/null 2>&1; then
    log "'$c' missing: running scripts/install-deps.sh"
    "$ROOT/scripts/install-deps.sh"
    break
  fi
done

# ---------------------------------------------------------------- build
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-target}/release/berth}
if [ "$run_berth" = 1 ]; then
  if [ "$build" = 1 ]; then
    log "cargo build --release -p berth-server"
    cargo build --release -p berth-server
  fi
  [ -x "$BERTH_BIN" ] || die "$BERTH_BIN not found or not executable (build it, or drop --no-build)"
fi

# ---------------------------------------------------------------- temp dir, ports
base=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
if [ -z "${BENCH_TMPDIR:-}" ] && [ "$(stat -c %d "$base")" != "$(stat -c %d "$ROOT")" ]; then
  base="$ROOT/target"  # keep bench data on the repository's disk (e.g. /tmp may be a tmpfs)
fi
mkdir -p "$base"
T=$(mktemp -d "$base/berth-bench.XXXXXX")
REF_PID=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  if [ -n "$REF_PID" ] && kill -0 "$REF_PID" 2>/dev/null; then
    kill -TERM "$REF_PID" 2>/dev/null || true
    wait "$REF_PID" 2>/dev/null || true
  fi
  # A Berth left behind by an interrupted bench.py: found by our unique data dir.
  local p
  for p in $(pgrep -f -- "--data-dir $T/berth-data" || true); do
    kill -TERM "$p" 2>/dev/null || true
  done
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() {
  python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])'
}
read -r BERTH_PORT REF_PORT < <(free_ports)

if [ "$quick" = 0 ]; then
  avail_gib=$(($(df -Pk "$T" | awk 'NR==2 {print $4}') / 1024 / 1024))
  [ "$avail_gib" -ge 12 ] || die "only ${avail_gib} GiB free under $T; a full run needs about 10 GiB (try --quick)"
fi

mkdir -p "$OUT"
{
  echo "date:        $(date -Iseconds)"
  echo "commit:      $(git rev-parse -q --verify HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (dirty)')"
  echo "command:     scripts/bench.sh $ARGS"
  echo "bench.py:    ${extra[*]:-(defaults)}"
  echo "berth:       $([ "$run_berth" = 1 ] && echo "$BERTH_BIN (built $(stat -c %y "$BERTH_BIN" 2>/dev/null))" || echo 'not run')"
  echo "reference:   $([ "$run_ref" = 1 ] && docker-registry --version 2>/dev/null | head -n 1 || echo 'not run')"
  echo "cpu:         $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory:      $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "temp dir:    $T ($(df -PT "$T" | awk 'NR==2 {print $2 " on " $1}'))"
  echo "loadavg:     $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/run-info.txt"
cat "$OUT/run-info.txt"

# ---------------------------------------------------------------- SHA-256 speed
# A fresh VM pays for the first touch of each guest page (seen here: writing
# into never-used memory runs at ~300 MB/s, into reused memory at >3 GB/s).
# Touch most of the RAM once so that neither registry's run pays that price.
warm_mib=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.7)}' /proc/meminfo)
log "warming up ${warm_mib} MiB of memory (first touch of guest pages is slow on a VM)"
dd if=/dev/zero of=/dev/shm/berth-bench-warm bs=1M count="$warm_mib" status=none || true
rm -f /dev/shm/berth-bench-warm

log "openssl speed -evp sha256 -seconds 3  -> bench-results/openssl-sha256.txt"
openssl speed -evp sha256 -seconds 3 >"$OUT/openssl-sha256.txt" 2>&1
sha_kbs=$(awk '$1 == "sha256" && NF >= 7 {v = $7} END {sub(/k$/, "", v); print v}' "$OUT/openssl-sha256.txt")
if [ -n "$sha_kbs" ]; then
  awk -v k="$sha_kbs" 'BEGIN {printf "SHA-256 one core, 16 KiB blocks: %.0f MB/s\n", k / 1000}'
else
  echo "bench.sh: could not read the 16384-byte column of openssl speed" >&2
fi

check_errors() {  # bench.py keeps going after a failed test; report them
  python3 -c '
import json, sys
t = json.load(open(sys.argv[1])).get("tests", {})
errs = {k: v for k, v in t.items() if k.startswith("error_")}
for k, v in errs.items():
    print(f"bench.sh: {sys.argv[2]}: test {k[6:]} FAILED: {v}", file=sys.stderr)
sys.exit(1 if errs else 0)' "$1" "$2"
}
failed=0

# ---------------------------------------------------------------- reference registry
if [ "$run_ref" = 1 ]; then
  log "reference registry (docker-registry) on 127.0.0.1:$REF_PORT"
  mkdir -p "$T/ref-data" "$T/work"
  printf 'version: 0.1\nstorage: { filesystem: { rootdirectory: %s }, delete: { enabled: true } }\nhttp: { addr: 127.0.0.1:%s }\n' \
    "$T/ref-data" "$REF_PORT" >"$T/ref.yml"
  # The reference registry crashes at start when AWS_CA_BUNDLE is set.
  env -u AWS_CA_BUNDLE docker-registry serve "$T/ref.yml" >"$T/ref.log" 2>&1 &
  REF_PID=$!
  for _ in $(seq 1 300); do
    kill -0 "$REF_PID" 2>/dev/null || { tail -n 20 "$T/ref.log" >&2; die "docker-registry exited at start"; }
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$REF_PORT/v2/")" = 200 ] && break
    sleep 0.1
  done
  python3 "$BENCH_PY" --url "http://127.0.0.1:$REF_PORT" --pid "$REF_PID" --workdir "$T/work" \
    --out "$OUT/reference.json" "${extra[@]}" 2>&1 | tee "$OUT/reference.txt"
  check_errors "$OUT/reference.json" reference || failed=1
  kill -TERM "$REF_PID"
  wait "$REF_PID" 2>/dev/null || true
  REF_PID=
  tail -n 100 "$T/ref.log" >"$OUT/reference-server.log"
  rm -rf "$T/ref-data" "$T/work"
fi

# ---------------------------------------------------------------- Berth
if [ "$run_berth" = 1 ]; then
  log "Berth ($BERTH_BIN) on 127.0.0.1:$BERTH_PORT"
  mkdir -p "$T/work"
  python3 "$BENCH_PY" --url "http://127.0.0.1:$BERTH_PORT" \
    --start-cmd "$BERTH_BIN serve --listen 127.0.0.1:$BERTH_PORT --data-dir $T/berth-data" \
    --workdir "$T/work" --out "$OUT/berth.json" "${extra[@]}" 2>&1 | tee "$OUT/berth.txt"
  check_errors "$OUT/berth.json" berth || failed=1
  rm -rf "$T/berth-data" "$T/work"
fi

# ---------------------------------------------------------------- comparison
if [ "$run_ref" = 1 ] && [ "$run_berth" = 1 ]; then
  log "comparison -> bench-results/compare.md"
  python3 "$ROOT/scripts/bench-compare.py" "$OUT/berth.json" "$OUT/reference.json" \
    --openssl "$OUT/openssl-sha256.txt" | tee "$OUT/compare.md"
fi

log "done; results in bench-results/"
exit "$failed"
