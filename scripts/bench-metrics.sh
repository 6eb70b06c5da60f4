#!/usr/bin/env bash
# What observability costs: manifest GET throughput (bench.py test d: wrk,
# 2 threads, 32 connections) on one Berth process, without and with a
# Prometheus-style scrape of /metrics every second, alternating runs so that
# drift hits both alike; then the same with the access log at `warn` (no line
# per request) to show what the per-request log line costs.
#
#   scripts/bench-metrics.sh [RUNS]        (default 3 runs of each case)
#
# With BASELINE_BIN set to another build (an older commit's, say), its test d
# is measured too, in runs alternating with the current binary's, to show
# what the observability as a whole costs against it.
#
# Uses target/release/berth (build it first: cargo build --release -p berth-server).
# The server's log goes to a file, as it would to journald or a container
# runtime. Results: bench-results/metrics-overhead.txt (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_PY="$ROOT/../shared/bench/bench.py"
BIN=${BERTH_BIN:-$ROOT/target/release/berth}
RUNS=${1:-3}
OUT="$ROOT/bench-results"
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p berth-server" >&2; exit 1; }
[ -f "$BENCH_PY" ] || { echo "bench.py not found at $BENCH_PY" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-metrics.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts berth (binary $2, default $BIN) with log level $1; sets PORT and PID.
start_berth() {
  PORT=$(free_port)
  mkdir -p "$WORK/data-$1"
  BERTH_LOG__LEVEL=$1 "${2:-$BIN}" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data-$1" \
    >"$WORK/berth-$1.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null && return 0
    sleep 0.1
  done
  echo "berth did not start" >&2
  exit 1
}

# One test d run; prints requests per second.
run_d() {
  local out="$WORK/d-$RANDOM.json"
  python3 "$BENCH_PY" --url "http://127.0.0.1:$PORT" --pid "$PID" --tests d --runs 1 --workdir "$WORK" --out "$out" \
    >/dev/null 2>&1
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["tests"]["manifest_get"]["rps_median"])' "$out"
}

# Scrapes /metrics every second until killed.
scraper() {
  while true; do
    curl -fs "http://127.0.0.1:$PORT/metrics" >/dev/null || true
    sleep 1
  done
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

report="$OUT/metrics-overhead.txt"
{
  echo "# bench-metrics.sh on $(git rev-parse --short HEAD) at $(date -u +%FT%TZ), $RUNS runs per case"
  echo "# binary: $BIN; machine: $(nproc) cores"
} >"$report"

start_berth info
plain=() scraped=()
for i in $(seq "$RUNS"); do
  plain+=("$(run_d)")
  scraper &
  SCRAPER=$!
  scraped+=("$(run_d)")
  kill "$SCRAPER"
  wait "$SCRAPER" 2>/dev/null || true
  echo "run $i: without scrapes ${plain[-1]} req/s, with a scrape every second ${scraped[-1]} req/s"
done | tee -a "$report"
scrape_bytes=$(curl -fs "http://127.0.0.1:$PORT/metrics" | wc -c)
scrape_ms=$(curl -fs -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT/metrics" | awk '{printf "%.2f", $1*1000}')
kill "$PID"

start_berth warn
quiet=()
for i in $(seq "$RUNS"); do
  quiet+=("$(run_d)")
  echo "run $i: access log off (level warn) ${quiet[-1]} req/s"
done | tee -a "$report"

if [ -n "${BASELINE_BIN:-}" ]; then
  start_berth baseline-info "$BASELINE_BIN"
  BASE_PORT=$PORT BASE_PID=$PID
  start_berth info
  CUR_PORT=$PORT CUR_PID=$PID
  for i in $(seq "$RUNS"); do
    PORT=$BASE_PORT PID=$BASE_PID
    b=$(run_d)
    PORT=$CUR_PORT PID=$CUR_PID
    c=$(run_d)
    echo "run $i: baseline $b req/s, current $c req/s"
  done | tee -a "$report"
fi

{
  p=$(grep -o 'without scrapes [0-9.]*' "$report" | awk '{print $3}' | median)
  s=$(grep -o 'every second [0-9.]*' "$report" | awk '{print $3}' | median)
  q=$(grep -o 'level warn) [0-9.]*' "$report" | awk '{print $3}' | median)
  echo "median without scrapes: $p req/s"
  echo "median with a scrape every second: $s req/s ($(awk -v p="$p" -v s="$s" 'BEGIN {printf "%+.1f%%", (s - p) / p * 100}'))"
  echo "median with the access log off: $q req/s (the log line per request costs $(awk -v p="$p" -v q="$q" 'BEGIN {printf "%.1f%%", (q - p) / q * 100}'))"
  echo "one scrape: $scrape_bytes bytes in $scrape_ms ms"
  if [ -n "${BASELINE_BIN:-}" ]; then
    b=$(grep -o 'baseline [0-9.]*' "$report" | awk '{print $2}' | median)
    c=$(grep -o 'current [0-9.]*' "$report" | awk '{print $2}' | median)
    echo "median baseline $b req/s, current $c req/s ($(awk -v b="$b" -v c="$c" 'BEGIN {printf "%+.1f%%", (c - b) / b * 100}'))"
  fi
} | tee -a "$report"
