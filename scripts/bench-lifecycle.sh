#!/usr/bin/env bash
# Lifecycle at scale (issue 6): retention preview and run, garbage collection
# and fsck over 1,000,000 tags in 1,000 repositories in the default setup (blob
# files plus one SQLite database), and the latency of tag listing while GC runs.
# A benchmark, not a test: neither `cargo test` nor CI runs it.
#
#   scripts/bench-lifecycle.sh [--no-build] [--keep] [--repos N] [--tags N]
#                              [--save-snapshot DIR | --from-snapshot DIR] [--fresh-ext4 GIB]
#
#   --no-build    use the existing release binaries (default: cargo build --release
#                 -p berth-server -p berth-bench-seed)
#   --keep        keep the data dir afterwards (its path is printed), e.g. to profile a step
#   --repos N     repositories to seed (default 1000)
#   --tags N      tags per repository (default 1000); the policy keeps the newest half
#   --save-snapshot DIR   after the retention run, save the data dir to DIR (replacing it):
#                 the database copied, the blob files hard-linked, so this run's own GC
#                 then deletes hard-linked files too (see --from-snapshot)
#   --from-snapshot DIR   start from DIR instead of seeding and running retention (the
#                 seed, preview and run rows then say "skipped"): a GC-only run in about
#                 3 minutes, to compare builds or settings on the same data. The database
#                 is copied; the blob files are hard links to DIR's (copying a million small
#                 files takes over an hour here), so deleting one frees no blocks and the
#                 GC's file deletions cost less than in a full run. Compare such runs
#                 with each other, not with full runs.
#   --fresh-ext4 GIB  put the data dir on an ext4 filesystem of GIB GiB made for this run in
#                 an image file under BENCH_TMPDIR, loop-mounted, unmounted and removed at
#                 the end (needs root). mkfs.ext4 and mount run with their defaults: a
#                 journal and no `discard`, as a Debian install lays out a disk (fstrim.timer
#                 trims it weekly). Without it the data dir is on the repository's
#                 filesystem, whatever its mount options: where that is mounted with
#                 `discard` and has no journal (this project's VMs), every deleted file
#                 waits for its TRIM and the GC's time follows the disk's TRIM latency.
#                 The loop device is not free either: its writes go through a second page
#                 cache into the image file, and each fsync flushes both filesystems.
#                 run-info.txt records the data dir's mount options either way.
#
# Both binaries are copied into the temp dir first, so that a build in the same
# target/ during the run cannot swap them between steps.
#
# Steps, in this order, each under /usr/bin/time -v (wall time, max RSS) while
# /proc is polled for the peak anonymous RSS (max RSS also counts the pages of
# the database file that SQLite maps into memory):
#   seed             berth-bench-seed: per repository one shared layer and, per tag,
#                    a config blob and an OCI image manifest (rows and blob files)
#   preview          berth retention set '**' --keep-last TAGS/2, then
#                    berth retention preview > /dev/null (a decision per tag)
#   preview-deleted  berth retention preview --deleted-only > /dev/null
#   run              berth retention run (deletes half the tags, their manifests)
#   tags/list        berth serve with scheduled jobs off; wrk GETs
#                    /v2/<random repo>/tags/list?n=100, each connection pausing
#                    WRK_DELAY_MS between requests: once alone (the baseline), then
#                    for exactly as long as
#   gc               BERTH_GC__GRACE_SECS=0 berth gc --json runs on the same data dir
#                    (at its default --nice 10)
#   fsck             berth fsck --json, after the server stopped (must find no problem)
#
# Results go to bench-results/lifecycle/ (git-ignored):
#   <step>.time             /usr/bin/time -v of the step
#   <step>.out, <step>.err  its stdout (unless sent to /dev/null) and its stderr, each
#                           line prefixed with the time it arrived (gc's phases)
#   wrk-baseline.txt, wrk-gc.txt   wrk --latency output (RESULT line: percentiles in µs)
#   serve.log, run-info.txt, summary.md (also printed at the end)
#
# Targets: preview < 10 s, gc < 60 s, tags/list p99 < 5 ms while gc runs.
# A full run takes 12 to 15 minutes and needs about 6 GiB of disk; keep the
# machine otherwise idle. Environment:
#   BERTH_BIN       berth binary (default target/release/berth)
#   SEED_BIN        seeder binary (default target/release/berth-bench-seed)
#   BENCH_TMPDIR    where to make the data dir (default target/, on the repository's disk)
#   WRK_SECS        length of the baseline wrk run (default 20)
#   WRK_CONNS       wrk connections, on one thread (default 4)
#   WRK_DELAY_MS    pause of each connection between its requests (default 2)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT="$ROOT/bench-results/lifecycle"
LUA="$ROOT/scripts/lib/bench-tags-list.lua"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
log() { printf '\n### [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'bench-lifecycle.sh: ERROR: %s\n' "$*" >&2; exit 1; }

ARGS="$*"
build=1 keep=0 repos=1000 tags=1000 save_snapshot='' from_snapshot='' fresh_ext4=''
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    --repos) repos=$2; shift ;;
    --tags) tags=$2; shift ;;
    --save-snapshot) save_snapshot=$2; shift ;;
    --from-snapshot) from_snapshot=$2; shift ;;
    --fresh-ext4) fresh_ext4=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ -z "$save_snapshot" ] || [ -z "$from_snapshot" ] || die "--save-snapshot and --from-snapshot exclude each other"
[ -z "$from_snapshot" ] || [ -f "$from_snapshot/berth.db" ] || die "$from_snapshot holds no berth.db"
# Snapshots hard-link their files, which cannot cross into a filesystem made for one run.
[ -z "$fresh_ext4" ] || [ -z "$save_snapshot$from_snapshot" ] || die "--fresh-ext4 excludes the snapshot options"
[ -z "$fresh_ext4" ] || [ "$fresh_ext4" -gt 0 ] 2>/dev/null || die "--fresh-ext4 takes a size in GiB"
[ -z "$fresh_ext4" ] || [ "$(id -u)" = 0 ] || die "--fresh-ext4 mounts a filesystem: run as root"
WRK_SECS=${WRK_SECS:-20}
WRK_CONNS=${WRK_CONNS:-4}
WRK_DELAY_MS=${WRK_DELAY_MS:-2}
keep_last=$((tags / 2))

# shellcheck source=lib/bench-common.sh source-path=SCRIPTDIR
source "$ROOT/scripts/lib/bench-common.sh"
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install time)"
for c in wrk curl jq python3 sha256sum; do
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

# ---------------------------------------------------------------- temp dir, port
base=${BENCH_TMPDIR:-$ROOT/target}
mkdir -p "$base"
T=$(mktemp -d "$base/berth-bench-lifecycle.XXXXXX")
DATA="$T/data"
SERVER_PID='' WRK_PID='' MOUNTED=''
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
  if [ "$keep" = 1 ]; then
    echo "bench-lifecycle.sh: data dir kept: $DATA${MOUNTED:+ (still mounted from $T/fs.img)}" >&2
  else
    [ -z "$MOUNTED" ] || umount "$MOUNTED" || echo "bench-lifecycle.sh: could not unmount $MOUNTED" >&2
    rm -rf "$T"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "$fresh_ext4" ]; then
  log "a fresh ext4 of $fresh_ext4 GiB for the data dir (mkfs.ext4 and mount defaults)"
  truncate -s "${fresh_ext4}G" "$T/fs.img"
  mkfs.ext4 -q -F "$T/fs.img"
  mkdir "$T/fs"
  mount -o loop "$T/fs.img" "$T/fs"
  MOUNTED="$T/fs"
  DATA="$T/fs/data"
fi

# Private copies: a concurrent `cargo build` replaces target/release/berth in place.
mkdir -p "$T/bin"
cp "$BERTH_BIN" "$T/bin/berth"
cp "$SEED_BIN" "$T/bin/berth-bench-seed"
BERTH_BUILT=$(stat -c %y "$BERTH_BIN")
BERTH_BIN="$T/bin/berth"
SEED_BIN="$T/bin/berth-bench-seed"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"

mkdir -p "$DATA"
avail_gib=$(($(df -Pk "$DATA" | awk 'NR==2 {print $4}') / 1024 / 1024))
need_gib=$((repos * tags * 6 / 1000000 + 1))
[ "$avail_gib" -ge "$need_gib" ] || die "only ${avail_gib} GiB free under $DATA; this run needs about ${need_gib} GiB"

rm -rf "$OUT"
mkdir -p "$OUT"
{
  echo "date:        $(date -Iseconds)"
  echo "commit:      $(git rev-parse -q --verify HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (dirty)')"
  echo "command:     scripts/bench-lifecycle.sh $ARGS"
  echo "dataset:     $repos repositories x $tags tags; keep-last $keep_last"
  echo "berth:       built $BERTH_BUILT, sha256 $(sha256sum <"$BERTH_BIN" | cut -c1-16)"
  echo "wrk:         -t1 -c$WRK_CONNS, ${WRK_DELAY_MS} ms pause per connection, baseline ${WRK_SECS} s"
  echo "cpu:         $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory:      $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "kernel:      $(uname -r)"
  echo "sqlite3:     bundled with sqlx (libsqlite3-sys $(awk '/^name = "libsqlite3-sys"/ {getline; print $3}' Cargo.lock | tr -d '"'))"
  echo "data dir:    $DATA ($(findmnt -no FSTYPE,SOURCE,OPTIONS -T "$DATA"))"
  echo "loadavg:     $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
} >"$OUT/run-info.txt"
cat "$OUT/run-info.txt"

# ---------------------------------------------------------------- helpers
# timed STEP STDOUT CMD...: runs CMD under time -v; its stdout goes to STDOUT,
# its stderr (time-stamped) to STEP.err, its peak RssAnon (KiB) to STEP.anon.
# Fails the benchmark when CMD fails.
timed() {
  local step=$1 stdout=$2
  shift 2
  log "$step: ${*#"$T/bin/"}"
  echo "$step: loadavg before $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
  (
    set -o pipefail
    /usr/bin/time -v -o "$OUT/$step.time" "$@" 2>&1 >"$stdout" | stamp >"$OUT/$step.err"
  ) &
  local sub=$! timer='' cmd='' anon=0 kb
  while kill -0 "$sub" 2>/dev/null; do
    [ -n "$timer" ] || timer=$(pgrep -P "$sub" -x time || true)
    [ -n "$cmd" ] || [ -z "$timer" ] || cmd=$(pgrep -P "$timer" || true)
    if [ -n "$cmd" ]; then
      kb=$(awk '/^RssAnon:/ {print $2}' "/proc/$cmd/status" 2>/dev/null || true)
      if [ -n "$kb" ] && [ "$kb" -gt "$anon" ]; then anon=$kb; fi
    fi
    sleep 0.2
  done
  echo "$anon" >"$OUT/$step.anon"
  if ! wait "$sub"; then
    tail -n 20 "$OUT/$step.err" >&2
    die "$step failed (see $OUT/$step.err)"
  fi
  printf '%s: %s s, max RSS %s MiB, peak anonymous RSS %s MiB\n' "$step" "$(wall_s "$step")" "$(rss_mib "$step")" \
    "$(anon_mib "$step")"
}
rss_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$OUT/$1.time"; }
anon_mib() { awk '{printf "%.0f", $1 / 1024}' "$OUT/$1.anon"; }
# The paced tags/list load, for as long as -dSECONDS says (env execs wrk, so $! is wrk's pid).
wrk_cmd=(env BENCH_REPOS="$repos" BENCH_DELAY_MS="$WRK_DELAY_MS"
  wrk -t1 -c"$WRK_CONNS" --timeout 10s --latency -s "$LUA" "$URL")

# copy_data FROM TO: a data dir for a snapshot, either way. The database is
# copied (SQLite writes it in place); blob and upload files are hard-linked,
# because copying a million small files takes over an hour here.
copy_data() {
  mkdir -p "$2"
  cp -a "$1"/berth.db* "$2"/
  cp -al "$1/blobs" "$1/uploads" "$2"/
  sync
}

# ---------------------------------------------------------------- seed
if [ -n "$from_snapshot" ]; then
  log "copying the snapshot's database, hard-linking its files ($from_snapshot)"
  copy_data "$from_snapshot" "$DATA"
  echo "snapshot:    $from_snapshot (seed, preview and run skipped; blob files hard-linked)" |
    tee -a "$OUT/run-info.txt"
else
  timed seed "$OUT/seed.out" "$SEED_BIN" --data-dir "$DATA" --repos "$repos" --tags "$tags"
  cat "$OUT/seed.out"
  log "sync (the seed's dirty pages must not be written back during the measurements)"
  sync
  {
    echo "database:    $(du -m "$DATA"/berth.db* | awk '{s += $1} END {print s}') MiB after seeding"
    echo "blob files:  $(find "$DATA/blobs" -type f | wc -l) after seeding"
  } | tee -a "$OUT/run-info.txt"

  # ---------------------------------------------------------------- retention
  log "berth retention set '**' --keep-last $keep_last"
  "$BERTH_BIN" retention set '**' --keep-last "$keep_last" --data-dir "$DATA"
  timed preview /dev/null "$BERTH_BIN" retention preview --data-dir "$DATA"
  cat "$OUT/preview.err"
  timed preview-deleted /dev/null "$BERTH_BIN" retention preview --deleted-only --data-dir "$DATA"
  timed run "$OUT/run.out" "$BERTH_BIN" retention run --data-dir "$DATA"
  cat "$OUT/run.err"
  if [ -n "$save_snapshot" ]; then
    log "saving the data dir to $save_snapshot (database copied, files hard-linked)"
    rm -rf "$save_snapshot"
    copy_data "$DATA" "$save_snapshot"
  fi
fi

# ---------------------------------------------------------------- serve, tags/list, gc
log "berth serve on $URL (scheduled jobs off)"
BERTH_GC__INTERVAL_SECS=0 BERTH_RETENTION__INTERVAL_SECS=0 BERTH_LIFECYCLE__EXPIRY_INTERVAL_SECS=0 \
  "$BERTH_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" >"$OUT/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$OUT/serve.log" >&2; die "berth serve exited at start"; }
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v2/")" = 200 ] && break
  sleep 0.1
done

# The seed as a client sees it: a page of tags, and a manifest whose bytes hash to its digest.
listed=$(curl -sf "$URL/v2/bench/r0000/tags/list?n=100" | jq '.tags | length')
[ "$listed" = "$((keep_last < 100 ? keep_last : 100))" ] || die "tags/list of bench/r0000 gave $listed tags"
first=$(curl -sf "$URL/v2/bench/r0000/tags/list?n=1" | jq -r '.tags[0]')
curl -sf -D "$T/headers" -o "$T/manifest" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "$URL/v2/bench/r0000/manifests/$first"
said=$(awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}' "$T/headers" | tr -d '\r')
[ "$said" = "sha256:$(sha256sum <"$T/manifest" | cut -d' ' -f1)" ] || die "manifest bench/r0000:$first does not hash to $said"

log "tags/list warm-up (5 s)"
"${wrk_cmd[@]}" -d5s >"$OUT/wrk-warmup.txt"
log "tags/list baseline, no gc (${WRK_SECS} s)"
echo "wrk-baseline: loadavg before $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
"${wrk_cmd[@]}" -d"$WRK_SECS"s >"$OUT/wrk-baseline.txt"
grep -E 'Latency|Requests/sec|RESULT' "$OUT/wrk-baseline.txt"

log "tags/list while gc runs"
"${wrk_cmd[@]}" -d3600s >"$OUT/wrk-gc.txt" &
WRK_PID=$!
sleep 0.2
timed gc "$OUT/gc.out" env BERTH_GC__GRACE_SECS=0 "$BERTH_BIN" gc --json --data-dir "$DATA"
# wrk prints its statistics when interrupted.
kill -INT "$WRK_PID"
wait "$WRK_PID" || true
WRK_PID=
cat "$OUT/gc.err" "$OUT/gc.out"
grep -E 'Latency|Requests/sec|RESULT' "$OUT/wrk-gc.txt"

server_hwm_mib=$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status")
server_anon_mib=$(awk '/^RssAnon/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status")
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=

# ---------------------------------------------------------------- fsck
timed fsck "$OUT/fsck.out" "$BERTH_BIN" fsck --json --data-dir "$DATA"
problems=$(jq '.problems | length' "$OUT/fsck.out")
echo "fsck: $(jq -c '{blobs_checked, files_checked, problems: (.problems | length)}' "$OUT/fsck.out")"
[ "$problems" = 0 ] || die "fsck found $problems problems (see $OUT/fsck.out)"

# ---------------------------------------------------------------- summary
met() { awk -v v="$1" -v t="$2" 'BEGIN {print (v < t ? "yes" : "**no**")}'; }
row() {  # row STEP LABEL TARGET_TEXT TARGET_SECONDS
  local w
  if [ ! -f "$OUT/$1.time" ]; then
    printf '| %s | skipped (snapshot) | | | %s | |\n' "$2" "${3:--}"
    return
  fi
  w=$(wall_s "$1")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$2" "$w" "$(rss_mib "$1")" "$(anon_mib "$1")" "${3:--}" \
    "$([ -n "${4:-}" ] && met "$w" "$4" || echo -)"
}
lat_row() {  # lat_row FILE LABEL
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$2" \
    "$(wrk_field "$1" requests)" \
    "$(awk -v n="$(wrk_field "$1" requests)" -v us="$(wrk_field "$1" duration_us)" 'BEGIN {printf "%.0f", n / us * 1e6}')" \
    "$(wrk_field "$1" p50_us | us_to_ms)" "$(wrk_field "$1" p90_us | us_to_ms)" \
    "$(wrk_field "$1" p99_us | us_to_ms)" "$(wrk_field "$1" p999_us | us_to_ms)" \
    "$(wrk_field "$1" max_us | us_to_ms)" \
    "$(($(wrk_field "$1" errors) + $(wrk_field "$1" non2xx)))"
}
gc_p99_ms=$(wrk_field wrk-gc.txt p99_us | us_to_ms)
{
  echo "## Lifecycle at scale: $repos repositories x $tags tags"
  echo
  echo "| step | wall (s) | max RSS (MiB) | peak anon RSS (MiB) | target | met |"
  echo "|---|---:|---:|---:|---|---|"
  row seed "seed (berth-bench-seed)"
  row preview "retention preview ($((repos * tags)) decisions)" "< 10 s" 10
  row preview-deleted "retention preview --deleted-only" "< 10 s" 10
  row run "retention run" ""
  row gc "gc (grace 0, while serving tags/list)" "< 60 s" 60
  row fsck "fsck" ""
  echo
  echo "tags/list?n=100 on random repositories, wrk -t1 -c$WRK_CONNS, ${WRK_DELAY_MS} ms pause per connection (ms):"
  echo
  echo "| load | requests | req/s | p50 | p90 | p99 | p99.9 | max | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  lat_row wrk-baseline.txt "no gc"
  lat_row wrk-gc.txt "during gc"
  echo
  echo "p99 during gc: $gc_p99_ms ms (target < 5 ms: $(met "$gc_p99_ms" 5)); the during-gc window is" \
    "$(wrk_field wrk-gc.txt duration_us | awk '{printf "%.1f", $1 / 1e6}') s against a gc wall time of $(wall_s gc) s;" \
    "server peak RSS ${server_hwm_mib} MiB (anonymous at the end ${server_anon_mib} MiB)"
  echo
  if [ -z "$from_snapshot" ]; then
    echo "- seed: $(cat "$OUT/seed.out")"
    echo "- preview: $(tail -n 1 "$OUT/preview.err" | cut -d' ' -f2-)"
    echo "- run: $(tail -n 1 "$OUT/run.err" | cut -d' ' -f2-)"
  fi
  echo "- gc phases (time each ended):"
  sed 's/^/  - /' "$OUT/gc.err"
  echo "- gc: $(cat "$OUT/gc.out")"
  echo "- fsck: $(jq -c '{blobs_checked, files_checked, problems: (.problems | length)}' "$OUT/fsck.out")"
} >"$OUT/summary.md"
log "summary (bench-results/lifecycle/summary.md)"
cat "$OUT/summary.md"
