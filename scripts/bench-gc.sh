#!/usr/bin/env bash
# Garbage collection on object storage and on the filesystem (issue 17): how
# fast `berth gc` deletes unreferenced blobs among live images, reported as
# seconds per 1,000 deleted blobs, and the latency of serving while it runs.
# A benchmark, not a test: neither `cargo test` nor CI runs it.
#
#   scripts/bench-gc.sh [--no-build] [--keep] [--only embedded|scaleout]
#                       [--repos N] [--tags N] [--unreferenced N]
#
#   --no-build        use the existing release binaries (default: cargo build --release
#                     -p berth-server -p berth-bench-seed)
#   --keep            keep the temp dir (data dirs, the PostgreSQL cluster) afterwards
#   --only BACKEND    run one leg: embedded (filesystem + SQLite) or scaleout
#                     (s3s-fs + PostgreSQL); default both, scale-out first
#   --repos N         repositories (default 100)
#   --tags N          tags per repository, each its own manifest (default 100): the live
#                     manifests are REPOS x TAGS, 10,000 by default
#   --unreferenced N  blobs no manifest references (default 100,000), 1 KiB each
#
# Data: berth-bench-seed writes an embedded data dir: per repository one shared
# layer and, per tag, a config blob and an OCI image manifest, plus the
# unreferenced blobs spread over the repositories, each linked to its
# repository as an upload links it. Everything is seeded 30 days old, so the
# unreferenced blobs are past the default grace period (24 h) by the wall
# clock: no test clock and no grace override is needed.
#   scaleout  a throwaway PostgreSQL 15 cluster with the server's default
#             durability (fsync, synchronous_commit and full_page_writes on; unlike
#             the test suite's cluster) and s3s-fs 0.14.1 over a temp dir; the seed
#             is moved there with `berth migrate` (which keeps every timestamp).
#   embedded  the seeded data dir itself.
#
# Per leg: berth serve with the scheduled jobs off; a warm-up; tags/list latency
# alone (wrk -t1 -cWRK_CONNS, each connection pausing WRK_DELAY_MS between its
# requests, GET /v2/bench/rNNNN/tags/list?n=100 on random repositories); then
# the same load for exactly as long as `berth gc --json` (a second process on the
# same stores, at its default --nice 10) runs; then the server is stopped and
# `berth fsck` must find no problem, every live image's manifest still being
# recorded and every unreferenced blob gone.
#
# Results go to bench-results/gc/ (git-ignored): run-info.txt, per leg LEG-gc.out
# (the report), LEG-gc.err (the phases, time-stamped), LEG-gc.time (/usr/bin/time -v),
# LEG-wrk-*.txt, LEG-fsck.out, and summary.md (also printed at the end). The figures:
#   s per 1,000 blobs   the collection's own elapsed_ms / blobs removed x 1000
#   sweep blobs/s       blobs removed / the time of the sweep phase alone (from the
#                       stamps of the phase lines: the phase that finds, records and
#                       deletes unreferenced blobs)
# Target (issue 17): >= 1,000 blobs/s on s3s-fs, serving unaffected.
#
# Environment:
#   BERTH_BIN       berth binary (default target/release/berth)
#   SEED_BIN        seeder binary (default target/release/berth-bench-seed)
#   BENCH_TMPDIR    where to make the temp dir (default target/, on the repository's disk)
#   BERTH_TOOLS_DIR where s3s-fs is installed (default target/tools; installed when missing)
#   WRK_SECS        length of the baseline wrk run (default 20)
#   WRK_CONNS       wrk connections, on one thread (default 4)
#   WRK_DELAY_MS    pause of each connection between its requests (default 2)
#   MIGRATE_JOBS    blobs `berth migrate` copies at once (default 16)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT="$ROOT/bench-results/gc"
LUA="$ROOT/scripts/lib/bench-tags-list.lua"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
log() { printf '\n### [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'bench-gc.sh: ERROR: %s\n' "$*" >&2; exit 1; }

ARGS="$*"
build=1 keep=0 only='' repos=100 tags=100 unreferenced=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    --only) only=$2; shift ;;
    --repos) repos=$2; shift ;;
    --tags) tags=$2; shift ;;
    --unreferenced) unreferenced=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
case "$only" in
  '') legs=(scaleout embedded) ;;
  embedded | scaleout) legs=("$only") ;;
  *) die "--only takes embedded or scaleout, not $only" ;;
esac
WRK_SECS=${WRK_SECS:-20}
WRK_CONNS=${WRK_CONNS:-4}
WRK_DELAY_MS=${WRK_DELAY_MS:-2}
MIGRATE_JOBS=${MIGRATE_JOBS:-16}

# shellcheck source=lib/bench-common.sh source-path=SCRIPTDIR
source "$ROOT/scripts/lib/bench-common.sh"
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install time)"
for c in wrk curl jq python3; do
  command -v "$c" >/dev/null 2>&1 || die "'$c' not found (scripts/install-deps.sh installs wrk, curl and jq)"
done

# ---------------------------------------------------------------- build
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-target}/release/berth}
SEED_BIN=${SEED_BIN:-${CARGO_TARGET_DIR:-target}/release/berth-bench-seed}
if [ "$build" = 1 ]; then
  log "cargo build --release -p berth-server -p berth-bench-seed"
  cargo build --release -p berth-server -p berth-bench-seed
fi
[ -x "$BERTH_BIN" ] || die "$BERTH_BIN not found or not executable (build it, or drop --no-build)"
[ -x "$SEED_BIN" ] || die "$SEED_BIN not found or not executable (build it, or drop --no-build)"

# ---------------------------------------------------------------- temp dir, services
base=${BENCH_TMPDIR:-$ROOT/target}
mkdir -p "$base"
T=$(mktemp -d "$base/berth-bench-gc.XXXXXX")
SEED="$T/seed"
SERVER_PID='' WRK_PID='' PG_DIR='' PG_BIN=''
# shellcheck source=lib/s3.sh source-path=SCRIPTDIR
source "$ROOT/scripts/lib/s3.sh"
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  local p
  for p in "$WRK_PID" "$SERVER_PID"; do
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  s3_stop
  if [ -n "$PG_DIR" ] && [ -f "$PG_DIR/data/postmaster.pid" ]; then
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null || true
  fi
  if [ "$keep" = 1 ]; then
    echo "bench-gc.sh: temp dir kept: $T" >&2
  else
    rm -rf "$T"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Private copies: a concurrent `cargo build` replaces target/release/berth in place.
mkdir -p "$T/bin"
cp "$BERTH_BIN" "$T/bin/berth"
cp "$SEED_BIN" "$T/bin/berth-bench-seed"
BERTH_BUILT=$(stat -c %y "$BERTH_BIN")
BERTH_BIN="$T/bin/berth"
SEED_BIN="$T/bin/berth-bench-seed"

rm -rf "$OUT"
mkdir -p "$OUT"
{
  echo "date:        $(date -Iseconds)"
  echo "commit:      $(git rev-parse -q --verify HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (dirty)')"
  echo "command:     scripts/bench-gc.sh $ARGS"
  echo "dataset:     $repos repositories x $tags tags ($((repos * tags)) live manifests), $unreferenced unreferenced 1 KiB blobs"
  echo "berth:       built $BERTH_BUILT, sha256 $(sha256sum <"$BERTH_BIN" | cut -c1-16)"
  echo "wrk:         -t1 -c$WRK_CONNS, ${WRK_DELAY_MS} ms pause per connection, baseline ${WRK_SECS} s"
  echo "cpu:         $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory:      $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "kernel:      $(uname -r)"
  echo "temp dir:    $T ($(findmnt -no FSTYPE,SOURCE,OPTIONS -T "$T"))"
  echo "loadavg:     $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
} >"$OUT/run-info.txt"
cat "$OUT/run-info.txt"

# ---------------------------------------------------------------- helpers
# timed STEP STDOUT CMD...: runs CMD under time -v; its stdout goes to STDOUT,
# its stderr (time-stamped) to STEP.err. Fails the benchmark when CMD fails.
timed() {
  local step=$1 stdout=$2
  shift 2
  log "$step: ${*#"$T/bin/"}"
  echo "$step: loadavg before $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
  if ! (
    set -o pipefail
    /usr/bin/time -v -o "$OUT/$step.time" "$@" 2>&1 >"$stdout" | stamp >"$OUT/$step.err"
  ); then
    tail -n 20 "$OUT/$step.err" >&2
    die "$step failed (see $OUT/$step.err)"
  fi
  printf '%s: %s s\n' "$step" "$(wall_s "$step")"
}
cpu_s() { awk -F': ' '/User time|System time/ {s += $2} END {printf "%.1f", s}' "$OUT/$1.time"; }
# Seconds of the day of a stamp `HH:MM:SS.mmm`.
day_s() { awk -F: '{printf "%.3f", $1 * 3600 + $2 * 60 + $3}'; }
# The stamp of the gc progress line starting with TEXT, in seconds of the day.
phase_end() { grep -m1 " gc: $2" "$OUT/$1-gc.err" | cut -d' ' -f1 | day_s; }

# ---------------------------------------------------------------- seed
timed seed "$OUT/seed.out" "$SEED_BIN" --data-dir "$SEED" --repos "$repos" --tags "$tags" \
  --unreferenced "$unreferenced"
cat "$OUT/seed.out"
sync

# ---------------------------------------------------------------- scale-out services
start_scaleout() {
  log "PostgreSQL (default durability) and s3s-fs"
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL server under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
  PG_DIR="$T/pg"
  mkdir -p "$PG_DIR"
  if [ "$(id -u)" = 0 ]; then
    # mktemp made $T private to root: the postgres user must pass through it.
    chmod a+x "$T"
    chown postgres:postgres "$PG_DIR"
  fi
  (cd "$PG_DIR" && pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -N -E UTF8 \
    >"$PG_DIR/initdb.log" 2>&1) || die "initdb failed (see $PG_DIR/initdb.log)"
  PG_PORT=$(free_port)
  (cd "$PG_DIR" && pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=100" -w -t 30 start >/dev/null) ||
    die "PostgreSQL did not start (see $PG_DIR/server.log)"
  s3_start || die "could not start s3s-fs"
  echo "scale-out:   PostgreSQL $("$PG_BIN/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT;" \
    "s3s-fs $S3S_FS_VERSION at $BERTH_TEST_S3_ENDPOINT over $S3_DIR" | tee -a "$OUT/run-info.txt"
  cat >"$T/scaleout.toml" <<EOF
[storage]
backend = "s3"
[storage.s3]
endpoint = "$BERTH_TEST_S3_ENDPOINT"
bucket = "$BERTH_TEST_S3_BUCKET"
prefix = "bench"
region = "us-east-1"
path_style = true
allow_http = true
access_key_id = "$BERTH_TEST_S3_ACCESS_KEY"
secret_access_key = "$BERTH_TEST_S3_SECRET_KEY"
[meta]
backend = "postgres"
url = "postgres://postgres@127.0.0.1:$PG_PORT/postgres"
EOF
  # s3s-fs answers every ListObjectsV2 by walking its whole bucket, and
  # `berth migrate` lists each blob's upload session: moving 130,000 blobs
  # through it takes hours (quadratic), which says nothing about the
  # collection. So the seed's blob files are copied into s3s-fs's directory
  # as the objects they become (same key layout under the prefix), and the
  # migration finds each one present (a HEAD) and copies only the records.
  local objects="$S3_DIR/data/$BERTH_TEST_S3_BUCKET/bench"
  mkdir -p "$objects"
  cp -a "$SEED/blobs" "$objects/blobs"
  timed scaleout-migrate "$OUT/scaleout-migrate.out" "$BERTH_BIN" migrate --from "$SEED" --to "$T/scaleout.toml" \
    --jobs "$MIGRATE_JOBS" --json
  jq -c '.' "$OUT/scaleout-migrate.out" || cat "$OUT/scaleout-migrate.out"
  [ "$(jq .blobs.failed "$OUT/scaleout-migrate.out")" = 0 ] || die "berth migrate failed to move some blobs"
}

# ---------------------------------------------------------------- one leg
# leg NAME ARGS...: ARGS select the stores for serve, gc and fsck.
leg() {
  local name=$1
  shift
  local port url
  port=$(free_port)
  url="http://127.0.0.1:$port"
  log "$name: berth serve on $url (scheduled jobs off)"
  BERTH_GC__INTERVAL_SECS=0 BERTH_RETENTION__INTERVAL_SECS=0 BERTH_LIFECYCLE__EXPIRY_INTERVAL_SECS=0 \
    "$BERTH_BIN" serve --listen "127.0.0.1:$port" "$@" >"$OUT/$name-serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$OUT/$name-serve.log" >&2; die "berth serve exited at start"; }
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/v2/")" = 200 ] && break
    sleep 0.1
  done
  local listed
  listed=$(curl -sf "$url/v2/bench/r0000/tags/list?n=100" | jq '.tags | length')
  [ "$listed" = "$((tags < 100 ? tags : 100))" ] || die "$name: tags/list of bench/r0000 gave $listed tags"

  local wrk_cmd=(env BENCH_REPOS="$repos" BENCH_DELAY_MS="$WRK_DELAY_MS"
    wrk -t1 -c"$WRK_CONNS" --timeout 10s --latency -s "$LUA" "$url")
  log "$name: tags/list warm-up (5 s), then alone (${WRK_SECS} s)"
  "${wrk_cmd[@]}" -d5s >"$OUT/$name-wrk-warmup.txt"
  "${wrk_cmd[@]}" -d"$WRK_SECS"s >"$OUT/$name-wrk-alone.txt"
  grep -E 'RESULT' "$OUT/$name-wrk-alone.txt"

  log "$name: tags/list while berth gc runs"
  "${wrk_cmd[@]}" -d3600s >"$OUT/$name-wrk-gc.txt" &
  WRK_PID=$!
  sleep 0.2
  timed "$name-gc" "$OUT/$name-gc.out" "$BERTH_BIN" gc --json "$@"
  # wrk prints its statistics when interrupted.
  kill -INT "$WRK_PID"
  wait "$WRK_PID" || true
  WRK_PID=
  cat "$OUT/$name-gc.err" "$OUT/$name-gc.out"
  grep -E 'RESULT' "$OUT/$name-wrk-gc.txt"
  local removed
  removed=$(jq .blobs_removed "$OUT/$name-gc.out")
  [ "$removed" = "$unreferenced" ] || die "$name: gc removed $removed blobs, not the $unreferenced unreferenced ones"

  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  timed "$name-fsck" "$OUT/$name-fsck.out" "$BERTH_BIN" fsck --json "$@"
  local problems checked
  problems=$(jq '.problems | length' "$OUT/$name-fsck.out")
  checked=$(jq '.blobs_checked' "$OUT/$name-fsck.out")
  [ "$problems" = 0 ] || die "$name: fsck found $problems problems (see $OUT/$name-fsck.out)"
  [ "$checked" = "$((repos * tags + repos))" ] || die "$name: fsck checked $checked blobs, not the $((repos * tags + repos)) live ones"
}

for l in "${legs[@]}"; do
  case "$l" in
    scaleout)
      start_scaleout
      leg scaleout --config "$T/scaleout.toml" --data-dir "$T/scaleout-data"
      ;;
    embedded) leg embedded --data-dir "$SEED" ;;
  esac
done

# ---------------------------------------------------------------- summary
lat_cells() {  # lat_cells FILE: req/s | p50 | p99 | p99.9 | max | errors
  printf '%s | %s | %s | %s | %s | %s' \
    "$(awk -v n="$(wrk_field "$1" requests)" -v us="$(wrk_field "$1" duration_us)" 'BEGIN {printf "%.0f", n / us * 1e6}')" \
    "$(wrk_field "$1" p50_us | us_to_ms)" "$(wrk_field "$1" p99_us | us_to_ms)" \
    "$(wrk_field "$1" p999_us | us_to_ms)" "$(wrk_field "$1" max_us | us_to_ms)" \
    "$(($(wrk_field "$1" errors) + $(wrk_field "$1" non2xx)))"
}
{
  echo "## GC: $unreferenced unreferenced blobs among $((repos * tags)) live manifests"
  echo
  echo "| backend | blobs removed | gc elapsed (s) | s per 1,000 blobs | sweep phase (s) | sweep blobs/s | gc CPU (s) | gc wall (s) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for l in "${legs[@]}"; do
    removed=$(jq .blobs_removed "$OUT/$l-gc.out")
    elapsed=$(jq '.elapsed_ms / 1000' "$OUT/$l-gc.out")
    sweep=$(awk -v a="$(phase_end "$l" 'unused links')" -v b="$(phase_end "$l" 'unreferenced blobs')" \
      'BEGIN {printf "%.2f", b - a}')
    printf '| %s | %s | %.2f | %.3f | %s | %.0f | %s | %s |\n' "$l" "$removed" "$elapsed" \
      "$(awk -v e="$elapsed" -v n="$removed" 'BEGIN {print e / n * 1000}')" "$sweep" \
      "$(awk -v s="$sweep" -v n="$removed" 'BEGIN {print n / s}')" "$(cpu_s "$l-gc")" "$(wall_s "$l-gc")"
  done
  echo
  echo "tags/list?n=100 on random repositories, wrk -t1 -c$WRK_CONNS, ${WRK_DELAY_MS} ms pause per connection (latency in ms):"
  echo
  echo "| backend | load | req/s | p50 | p99 | p99.9 | max | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|"
  for l in "${legs[@]}"; do
    echo "| $l | alone | $(lat_cells "$l-wrk-alone.txt") |"
    echo "| $l | during gc ($(wrk_field "$l-wrk-gc.txt" duration_us | awk '{printf "%.1f", $1 / 1e6}') s) | $(lat_cells "$l-wrk-gc.txt") |"
  done
  echo
  echo "- seed: $(cat "$OUT/seed.out")"
  if [ -f "$OUT/scaleout-migrate.out" ]; then
    echo "- migrate to PostgreSQL + s3s-fs: $(wall_s scaleout-migrate) s"
  fi
  for l in "${legs[@]}"; do
    echo "- $l gc phases (time each ended):"
    sed 's/^/  - /' "$OUT/$l-gc.err"
    echo "- $l gc: $(cat "$OUT/$l-gc.out")"
    echo "- $l fsck: $(jq -c '{blobs_checked, files_checked, problems: (.problems | length)}' "$OUT/$l-fsck.out")"
  done
} >"$OUT/summary.md"
log "summary (bench-results/gc/summary.md)"
cat "$OUT/summary.md"
