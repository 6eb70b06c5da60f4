#!/usr/bin/env bash
# The scale-out benchmark: Berth on S3 + PostgreSQL (one and two replicas) and
# the reference registry (Debian's docker-registry 2.8, CNCF distribution)
# with its S3 driver, side by side against the same S3 server in one run,
# measured by the shared yardstick ../shared/bench/bench.py, one configuration
# after the other (never two at once).
#
#   scripts/bench-scaleout.sh [--no-build] [--quick] [--configs A,B,...] [--pg-nosync] [BENCH.PY ARGS...]
#
#   --no-build     use the existing target/release/berth (default: cargo build --release -p berth-server)
#   --quick        bench.py --quick (small sizes, one run): a smoke run, not figures
#   --configs      which configurations, comma-separated (default: all but berth-s3sfs-2r)
#   --pg-nosync    PostgreSQL with fsync=off and synchronous_commit=off (default: durable,
#                  as in production; Berth's filesystem mode commits SQLite durably too)
#   anything else  passed to bench.py after the script's own arguments (so a --tests
#                  given here wins over the configuration's), e.g. --runs 5
#
# bench.py runs with --list-samples 50 --full-samples 5 (its --quick values):
# tag-list latency is no figure of this benchmark, and on moto each listing of
# the reference registry takes up to a second once it holds 10,000 tags.
#
# Configurations (each on a fresh S3 server and a fresh PostgreSQL cluster):
#   ref-moto              reference, S3 driver on moto (redirect disabled): cal,a,b,c,d,e,f
#   ref-moto-redirect     reference, S3 driver on moto, redirect enabled: c (pull; pushes first)
#   berth-moto            Berth S3 + PostgreSQL on moto, 1 replica, streamed: a,b,c,d,e,f
#   berth-moto-2r         the same with 2 replicas (see below): a,b,c,d,e,f
#   berth-moto-redirect   Berth S3 + PostgreSQL on moto, storage.redirect = true: c
#   berth-s3sfs           Berth S3 + PostgreSQL on s3s-fs, 1 replica, streamed: a,b,c,d,e,f
#   berth-s3sfs-redirect  Berth on s3s-fs, storage.redirect = true: c
#   berth-s3sfs-2r        (not by default) 2 replicas on s3s-fs: a,b,c,d,e,f
#   berth-fs              Berth filesystem + SQLite (the default mode), the base of the
#                         "S3 push >= 0.7x filesystem push" target: a,b,c
#
# Why two S3 servers: the reference registry's S3 driver needs
# ListMultipartUploads, which s3s-fs lacks, so the side-by-side comparison runs
# on moto, which both can use. moto is Python (about one core at most) and
# keeps no data off the request path cheaply, so Berth's own S3 figures are
# also taken on s3s-fs (Rust), closer to what the registry itself costs.
#
# What "two replicas" means here: two Berth processes over the same bucket and
# the same PostgreSQL database, no balancer in the path. A round-robin proxy
# on this 2-core machine would take as much CPU as it measures; instead the
# client spreads its connections the way a layer-4 round-robin balancer would:
# scripts/lib/bench_scaleout.py runs bench.py with every new connection (each
# http.client connection and each curl, i.e. each TCP connection) sent to the
# next replica, and wrk's two threads split over the two replicas by a
# generated Lua script (16 of the 32 connections on each). So an upload
# started on one replica is often finished on the other, and tag writes and
# manifest GETs go to both. bench.py's server CPU and RSS are then the sum
# over both replicas (peak memory is the peak of the sum). Both replicas share
# the same two cores as everything else, so this shows what sharing state
# through S3 and PostgreSQL costs, not how throughput grows with machines.
#
# How redirected pulls are measured: bench.py's pull (test c) runs
# `curl -L`, so against a registry answering 307 it times the redirect plus
# the download from the S3 server, with the same code as the streamed pull.
# The *-redirect configurations run bench.py --tests c. Test c pulls the blob
# test a pushed, and test a checks it with a HEAD that must answer 200, which
# the reference registry answers with its redirect too; so there
# scripts/lib/bench_scaleout.py (--redirect-pull) pushes the blob itself the
# way test a does (POST, then curl -T), untimed and without that HEAD, and
# checks that the blob GET answers a redirect to the store (else test c is
# reported as failed). Both registries then only answer the 307; the bytes
# come from the S3 server.
#
# Besides bench.py's figures, every timed run records the CPU seconds of the
# S3 server and of PostgreSQL (the process trees, through
# scripts/lib/bench_scaleout.py), so that summary.md can say where the time
# went: in the registry, the store, the database, the client, or waiting.
#
# Results go to bench-results/scaleout/ (git-ignored; a previous run's files there
# are removed first):
#   <config>.json / .txt        bench.py output per configuration
#   <config>-server.log         the tail of the registry's log (and the S3 server's)
#   compare-<config>.md         scripts/bench-compare.py of each Berth-on-moto run vs ref-moto
#   summary.md                  every figure for every configuration, the ratios against the
#                               targets (>= 1.5x the reference on moto; S3 push >= 0.7x of
#                               Berth's filesystem push), and the CPU split per figure
#   openssl-sha256.txt          single-core SHA-256 speed (full runs only)
#   run-info.txt                what was run, where, on which commit
#
# A full run takes about 30 to 40 minutes, half of it the reference registry
# on moto (its 10,000 tag writes alone some 10 minutes), and keeps up to about
# 16 GiB on disk at a time (one configuration's data, removed before the
# next). --quick takes about 4 minutes. A configuration still running after
# 45 minutes (--quick: 15) is stopped and reported as failed. Everything listens on 127.0.0.1 on free ports, all files live
# in one temp dir, and every process started is stopped by its PID at exit.
# Environment:
#   BERTH_BIN       binary to benchmark (default: target/release/berth)
#   BENCH_TMPDIR    where to make the temp dir (default: $TMPDIR or /tmp if on the
#                   repository's disk, else target/)
#   BERTH_TOOLS_DIR where s3s-fs and the moto venv are installed (default: target/tools)
#   BENCH_CONFIG_TIMEOUT  seconds one configuration may take (default 2700; --quick 900)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_PY="$ROOT/../shared/bench/bench.py"
HELPER="$ROOT/scripts/lib/bench_scaleout.py"
OUT="$ROOT/bench-results/scaleout"
TOOLS=${BERTH_TOOLS_DIR:-$ROOT/target/tools}
DEFAULT_CONFIGS=ref-moto,ref-moto-redirect,berth-moto,berth-moto-2r,berth-moto-redirect,berth-s3sfs,berth-s3sfs-redirect,berth-fs
KNOWN_CONFIGS=$DEFAULT_CONFIGS,berth-s3sfs-2r
S3_KEY=bench-access-key
S3_SECRET=bench-secret-key

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
log() { printf '\n### [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
say() { printf 'bench-scaleout: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

ARGS="$*"
build=1 quick=0 pg_sync=1 configs=$DEFAULT_CONFIGS
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --quick) quick=1; extra+=(--quick) ;;
    --configs) [ $# -ge 2 ] || die "--configs needs a value"; configs=$2; shift ;;
    --configs=*) configs=${1#--configs=} ;;
    --pg-nosync) pg_sync=0 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1") ;;
  esac
  shift
done
IFS=, read -r -a CONFIGS <<<"$configs"
for c in "${CONFIGS[@]}"; do
  case ",$KNOWN_CONFIGS," in *",$c,"*) ;; *) die "unknown configuration '$c' (known: $KNOWN_CONFIGS)" ;; esac
done
wants() { case ",$configs," in *",$1"*) return 0 ;; *) return 1 ;; esac; }  # any config starting with $1

[ -f "$BENCH_PY" ] || die "bench.py not found at $BENCH_PY (expected shared/ beside the repository)"
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  case ":$PATH:" in
    *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
    *) export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;;
  esac
fi

# ---------------------------------------------------------------- tools
apt_missing=()
for c in python3 curl wrk openssl; do
  command -v "$c" >/dev/null 2>&1 || apt_missing+=("$c")
done
if wants ref- && ! command -v docker-registry >/dev/null 2>&1; then apt_missing+=(docker-registry); fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing: ${apt_missing[*]} (apt-get install ${apt_missing[*]} as root)"
  log "apt-get install ${apt_missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${apt_missing[@]}"
fi

# moto: a Python that can import moto.server: the cached venv under the tools
# dir, else the python3 on the PATH, else a new venv with pip install.
MOTO_PY=
if wants ref-moto || wants berth-moto; then
  for py in "$TOOLS/moto/bin/python" "$(command -v python3)"; do
    if [ -x "$py" ] && "$py" -c 'import moto.server' >/dev/null 2>&1; then
      MOTO_PY=$("$py" -c 'import sys; print(sys.executable)')
      break
    fi
  done
  if [ -z "$MOTO_PY" ]; then
    log "installing moto[server] into a venv at $TOOLS/moto (once)"
    rm -rf "$TOOLS/moto"
    python3 -m venv "$TOOLS/moto" || die "python3 -m venv failed (apt-get install python3-venv)"
    "$TOOLS/moto/bin/pip" install --quiet 'moto[server]' || die "pip install 'moto[server]' failed"
    MOTO_PY=$TOOLS/moto/bin/python
    "$MOTO_PY" -c 'import moto.server' || die "moto installed, but moto.server does not import"
  fi
fi

# s3s-fs: scripts/lib/s3.sh's install (cargo install into the tools dir, once).
S3S_FS=
if wants berth-s3sfs; then
  # shellcheck source=scripts/lib/s3.sh
  source "$ROOT/scripts/lib/s3.sh"
  BERTH_TOOLS_DIR=$TOOLS s3_install || die "could not install s3s-fs"
fi

# PostgreSQL: Debian's package (scripts/lib/postgres.sh installs it when missing).
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
if wants berth-moto || wants berth-s3sfs; then
  pg_test_install || die "PostgreSQL is needed for the S3 + PostgreSQL configurations"
fi

# ---------------------------------------------------------------- build
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-target}/release/berth}
if wants berth-; then
  if [ "$build" = 1 ]; then
    log "cargo build --release -p berth-server"
    cargo build --release -p berth-server || die "build failed (--no-build benchmarks the existing $BERTH_BIN)"
  fi
  [ -x "$BERTH_BIN" ] || die "$BERTH_BIN not found or not executable (build it, or drop --no-build)"
  BERTH_BIN=$(cd "$(dirname "$BERTH_BIN")" && pwd)/$(basename "$BERTH_BIN")
fi

# ---------------------------------------------------------------- temp dir, cleanup
base=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
if [ -z "${BENCH_TMPDIR:-}" ] && [ "$(stat -c %d "$base")" != "$(stat -c %d "$ROOT")" ]; then
  base="$ROOT/target"  # keep bench data on the repository's disk (e.g. /tmp may be a tmpfs)
fi
mkdir -p "$base"
T=$(mktemp -d "$base/berth-scaleout.XXXXXX")
chmod 711 "$T"  # PostgreSQL runs as the postgres user and must reach its directory
RUN=$T/run      # one configuration's files, removed after it

PIDS=()         # every server process of the current configuration
BENCH_PID='' TAIL_PID='' WATCH_PID=''  # bench.py, the tail showing its output, its time limit
PG_DIR='' PG_PID='' PG_URL='' PG_BIN=''
STORE_PID='' STORE_URL='' STORE_NAME=''

stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null || true
}

pg_stop() {
  [ -n "$PG_DIR" ] || return 0
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    (cd "$PG_DIR" && pg_test_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null) \
      || { say "pg_ctl stop failed; stopping the postmaster $PG_PID"; stop_pid "$PG_PID"; }
  fi
  PG_DIR='' PG_PID='' PG_URL=''
}

# kill_tree PID: a process we started and the processes it started (bench.py
# with its curl or wrk), found by parent PID while it is stopped.
kill_tree() {
  local pid=$1 kids c
  kill -STOP "$pid" 2>/dev/null || return 0
  kids=$(pgrep -P "$pid" || true)
  for c in $kids; do kill_tree "$c"; done
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local p
  if [ -n "$BENCH_PID" ]; then kill_tree "$BENCH_PID"; BENCH_PID=''; fi
  if [ -n "$WATCH_PID" ]; then kill_tree "$WATCH_PID"; WATCH_PID=''; fi
  if [ -n "$TAIL_PID" ]; then stop_pid "$TAIL_PID"; TAIL_PID=''; fi
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  PIDS=()
  pg_stop
  STORE_PID='' STORE_URL='' STORE_NAME=''
  rm -rf "$RUN"
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  stop_all
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_up URL PID LOG WHAT: until URL answers an HTTP status below 500
wait_up() {
  local url=$1 pid=$2 logf=$3 what=$4 code i
  for ((i = 0; i < 300; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logf" >&2
      die "$what exited at start (log above)"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
    case "$code" in [1-4]??) return 0 ;; esac
    sleep 0.1
  done
  tail -n 30 "$logf" >&2
  die "$what did not answer on $url within 30 s"
}

# ---------------------------------------------------------------- servers
start_moto() {
  local port
  mkdir -p "$RUN/moto-tmp"
  port=$(free_port)
  # moto keeps objects above 5 MiB in temp files: keep them in our temp dir.
  TMPDIR=$RUN/moto-tmp "$MOTO_PY" -m moto.server -H 127.0.0.1 -p "$port" >"$RUN/store.log" 2>&1 </dev/null &
  STORE_PID=$!
  PIDS+=("$STORE_PID")
  STORE_URL=http://127.0.0.1:$port STORE_NAME=moto
  wait_up "$STORE_URL/" "$STORE_PID" "$RUN/store.log" moto
}

start_s3sfs() {
  local port
  mkdir -p "$RUN/s3sfs"
  port=$(free_port)
  "$S3S_FS" --host 127.0.0.1 --port "$port" --access-key "$S3_KEY" --secret-key "$S3_SECRET" \
    "$RUN/s3sfs" >"$RUN/store.log" 2>&1 </dev/null &
  STORE_PID=$!
  PIDS+=("$STORE_PID")
  STORE_URL=http://127.0.0.1:$port STORE_NAME=s3s-fs
  wait_up "$STORE_URL/" "$STORE_PID" "$RUN/store.log" s3s-fs
}

make_bucket() {
  if [ "$STORE_NAME" = s3s-fs ]; then
    mkdir -p "$RUN/s3sfs/$1"  # a bucket is a directory of s3s-fs's root
  else
    # moto does not check signatures: an unsigned CreateBucket is enough.
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$STORE_URL/$1")" = 200 ] || die "CreateBucket $1 on moto failed"
  fi
}

# pg_start: a fresh cluster in $RUN/pg (durable unless --pg-nosync).
pg_start() {
  local port opts attempt
  PG_BIN=$(pg_test_bindir) || die "no PostgreSQL server installed"
  PG_DIR=$RUN/pg
  mkdir -p "$PG_DIR"
  chmod 711 "$RUN"
  [ "$(id -u)" != 0 ] || chown postgres:postgres "$PG_DIR"
  (cd "$PG_DIR" && pg_test_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -N -E UTF8 \
    >"$PG_DIR/initdb.log" 2>&1) || { tail -n 20 "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  for attempt in 1 2 3; do
    port=$(free_port)
    opts="-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200"
    [ "$pg_sync" = 1 ] || opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    # -l always: without it pg_ctl keeps a captured stdout open and hangs.
    if (cd "$PG_DIR" && pg_test_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" \
      -o "$opts" -w -t 30 start >/dev/null); then
      PG_PID=$(head -n 1 "$PG_DIR/data/postmaster.pid")
      PG_URL=postgres://postgres@127.0.0.1:$port/postgres
      return 0
    fi
    say "PostgreSQL did not start on port $port (attempt $attempt)"
  done
  tail -n 20 "$PG_DIR/server.log" >&2
  die "could not start PostgreSQL"
}

# start_berth NAME REDIRECT(0|1) S3(0|1): appends to PIDS, BERTH_URLS, BERTH_PIDS.
BERTH_URLS=() BERTH_PIDS=()
start_berth() {
  local name=$1 redirect=$2 s3=$3 logf=$RUN/$1.log addr='' pid i
  local envs=()
  if [ "$s3" = 1 ]; then
    envs=(
      BERTH_STORAGE__BACKEND=s3
      "BERTH_STORAGE__REDIRECT=$([ "$redirect" = 1 ] && echo true || echo false)"
      "BERTH_STORAGE__S3__ENDPOINT=$STORE_URL"
      BERTH_STORAGE__S3__BUCKET=berth
      BERTH_STORAGE__S3__PREFIX=bench
      BERTH_STORAGE__S3__REGION=us-east-1
      BERTH_STORAGE__S3__PATH_STYLE=true
      BERTH_STORAGE__S3__ALLOW_HTTP=true
      "BERTH_STORAGE__S3__ACCESS_KEY_ID=$S3_KEY"
      "BERTH_STORAGE__S3__SECRET_ACCESS_KEY=$S3_SECRET"
      BERTH_META__BACKEND=postgres
      "BERTH_META__URL=$PG_URL"
    )
  fi
  env "${envs[@]}" "$BERTH_BIN" serve --listen 127.0.0.1:0 --data-dir "$RUN/$name-data" >"$logf" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$pid")
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logf" >&2; die "Berth ($name) exited at start (log above)"; }
    addr=$(grep -o 'listening on [0-9.:]*' "$logf" | head -n 1 | cut -d' ' -f3 || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { tail -n 30 "$logf" >&2; die "Berth ($name) did not report its address"; }
  wait_up "http://$addr/v2/" "$pid" "$logf" "Berth ($name)"
  BERTH_URLS+=("http://$addr")
  BERTH_PIDS+=("$pid")
}

# start_reference REDIRECT(0|1): the reference registry on moto, bucket "reference".
REF_URL='' REF_PID=''
start_reference() {
  local port disable
  port=$(free_port)
  disable=$([ "$1" = 1 ] && echo false || echo true)
  cat >"$RUN/ref.yml" <<YML
version: 0.1
storage:
  s3:
    accesskey: $S3_KEY
    secretkey: $S3_SECRET
    region: us-east-1
    regionendpoint: "$STORE_URL"
    bucket: reference
    secure: false
    v4auth: true
    rootdirectory: /reference
  redirect:
    disable: $disable
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
  # The reference registry crashes at start when AWS_CA_BUNDLE is set.
  env -u AWS_CA_BUNDLE docker-registry serve "$RUN/ref.yml" >"$RUN/ref.log" 2>&1 </dev/null &
  REF_PID=$!
  PIDS+=("$REF_PID")
  REF_URL=http://127.0.0.1:$port
  wait_up "$REF_URL/v2/" "$REF_PID" "$RUN/ref.log" "docker-registry"
}

# ---------------------------------------------------------------- one configuration
failed=0
check_errors() {  # bench.py keeps going after a failed test; report them
  python3 -c '
import json, sys
t = json.load(open(sys.argv[1])).get("tests", {})
errs = {k: v for k, v in t.items() if k.startswith("error_")}
for k, v in errs.items():
    print(f"bench-scaleout: {sys.argv[2]}: test {k[6:]} FAILED: {v}", file=sys.stderr)
sys.exit(1 if errs else 0)' "$1" "$2"
}

# bench NAME URL PID TESTS [helper args...]
# bench.py runs in the background and the shell waits for it, so that a
# TERM or INT reaches the EXIT trap at once and the trap stops it.
bench() {
  local name=$1 url=$2 pid=$3 tests=$4 rc=0
  shift 4
  mkdir -p "$RUN/work"
  log "$name: bench.py --tests $tests against $url"
  python3 "$HELPER" run --bench "$BENCH_PY" --lua-dir "$RUN" "$@" -- \
    --url "$url" --pid "$pid" --workdir "$RUN/work" --out "$OUT/$name.json" --tests "$tests" \
    --list-samples 50 --full-samples 5 "${extra[@]}" \
    >"$OUT/$name.txt" 2>&1 </dev/null &
  BENCH_PID=$!
  tail -n +1 -f --pid="$BENCH_PID" "$OUT/$name.txt" &
  TAIL_PID=$!
  # A hung server must not hold the run forever.
  (
    sleep "$CONFIG_TIMEOUT"
    say "$name: still running after $CONFIG_TIMEOUT s (BENCH_CONFIG_TIMEOUT): stopping bench.py"
    kill_tree "$BENCH_PID"
  ) &
  WATCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=''
  kill_tree "$WATCH_PID"
  WATCH_PID=''
  wait "$TAIL_PID" || true
  TAIL_PID=''
  [ "$rc" = 0 ] || { say "$name: bench.py exited with status $rc"; failed=1; }
  [ -f "$OUT/$name.json" ] || { say "$name: bench.py wrote no results"; failed=1; return 0; }
  check_errors "$OUT/$name.json" "$name" || failed=1
}

# keep_logs NAME: the tail of every server log of the configuration
keep_logs() {
  local f
  : >"$OUT/$1-server.log"
  for f in "$RUN"/*.log "$RUN/pg/server.log"; do
    [ -f "$f" ] || continue
    { echo "==> $(basename "$f") <=="; tail -n 60 "$f"; echo; } >>"$OUT/$1-server.log"
  done
}

run_config() {
  local name=$1 tests=cal,a,b,c,d,e,f redirect=0 replicas=1 i
  local helper=()
  case "$name" in *-redirect) tests=c redirect=1 ;; esac
  case "$name" in *-2r) replicas=2 ;; esac
  mkdir -p "$RUN"
  BERTH_URLS=() BERTH_PIDS=()
  case "$name" in
    ref-moto*)
      start_moto
      make_bucket reference
      start_reference "$redirect"
      say "$name: docker-registry $REF_URL (pid $REF_PID) on moto $STORE_URL (pid $STORE_PID)"
      helper=(--cpu "moto=$STORE_PID")
      [ "$redirect" = 0 ] || helper+=(--redirect-pull)
      bench "$name" "$REF_URL" "$REF_PID" "$tests" "${helper[@]}"
      ;;
    berth-moto* | berth-s3sfs*)
      if [ "$name" = "${name#berth-moto}" ]; then start_s3sfs; else start_moto; fi
      make_bucket berth
      pg_start
      for ((i = 1; i <= replicas; i++)); do start_berth "berth-$i" "$redirect" 1; done
      say "$name: Berth ${BERTH_URLS[*]} (pids ${BERTH_PIDS[*]}) on $STORE_NAME $STORE_URL (pid $STORE_PID), PostgreSQL $PG_URL (pid $PG_PID)"
      [ "$tests" = c ] || tests=a,b,c,d,e,f
      helper=(--cpu "$STORE_NAME=$STORE_PID" --cpu "postgres=$PG_PID")
      [ "$redirect" = 0 ] || helper+=(--redirect-pull)
      if [ "$replicas" -gt 1 ]; then
        for ((i = 0; i < replicas; i++)); do helper+=(--cpu "replica-$((i + 1))=${BERTH_PIDS[$i]}"); done
        for ((i = 1; i < replicas; i++)); do helper+=(--replica "${BERTH_URLS[$i]}=${BERTH_PIDS[$i]}"); done
      fi
      bench "$name" "${BERTH_URLS[0]}" "${BERTH_PIDS[0]}" "$tests" "${helper[@]}"
      ;;
    berth-fs)
      start_berth berth-1 0 0
      say "$name: Berth ${BERTH_URLS[0]} (pid ${BERTH_PIDS[0]}) on the filesystem and SQLite under $RUN"
      bench "$name" "${BERTH_URLS[0]}" "${BERTH_PIDS[0]}" a,b,c
      ;;
  esac
  keep_logs "$name"
  stop_all
}

# ---------------------------------------------------------------- run
CONFIG_TIMEOUT=${BENCH_CONFIG_TIMEOUT:-$([ "$quick" = 1 ] && echo 900 || echo 2700)}
if [ "$quick" = 0 ]; then
  avail_gib=$(($(df -Pk "$T" | awk 'NR==2 {print $4}') / 1024 / 1024))
  [ "$avail_gib" -ge 20 ] || die "only ${avail_gib} GiB free under $T; a full run needs up to about 16 GiB (try --quick)"
fi

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.md "$OUT"/*.log
{
  echo "date:        $(date -Iseconds)"
  echo "commit:      $(git rev-parse -q --verify HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (dirty)')"
  echo "command:     scripts/bench-scaleout.sh $ARGS"
  echo "configs:     ${CONFIGS[*]}"
  echo "bench.py:    ${extra[*]:-(defaults)}"
  if wants berth-; then echo "berth:       $BERTH_BIN (built $(stat -c %y "$BERTH_BIN" 2>/dev/null))"; fi
  if wants ref-; then echo "reference:   $(docker-registry --version 2>/dev/null | head -n 1)"; fi
  if [ -n "$MOTO_PY" ]; then echo "moto:        $("$MOTO_PY" -c 'import moto; print(moto.__version__)') ($MOTO_PY)"; fi
  if [ -n "$S3S_FS" ]; then echo "s3s-fs:      $S3S_FS_VERSION ($S3S_FS)"; fi
  if wants berth-moto || wants berth-s3sfs; then
    echo "postgresql:  $("$(pg_test_bindir)/postgres" --version | awk '{print $3}') ($([ "$pg_sync" = 1 ] && echo 'durable: fsync on' || echo 'fsync=off, synchronous_commit=off'))"
  fi
  echo "cpu:         $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory:      $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "temp dir:    $T ($(df -PT "$T" | awk 'NR==2 {print $2 " on " $1}'))"
  echo "loadavg:     $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/run-info.txt"
cat "$OUT/run-info.txt"

if [ "$quick" = 0 ]; then
  # A fresh VM pays for the first touch of each guest page: touch most of the
  # RAM once so that no configuration pays it (as scripts/bench.sh does).
  warm_mib=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.7)}' /proc/meminfo)
  log "warming up ${warm_mib} MiB of memory (first touch of guest pages is slow on a VM)"
  dd if=/dev/zero of=/dev/shm/berth-scaleout-warm bs=1M count="$warm_mib" status=none || true
  rm -f /dev/shm/berth-scaleout-warm
  log "openssl speed -evp sha256 -seconds 3"
  openssl speed -evp sha256 -seconds 3 >"$OUT/openssl-sha256.txt" 2>&1 || true
fi

t0=$(date +%s)
for c in "${CONFIGS[@]}"; do
  c0=$(date +%s)
  run_config "$c"
  say "$c took $(($(date +%s) - c0)) s"
done

# ---------------------------------------------------------------- reports
for c in berth-moto berth-moto-2r; do
  if [ -f "$OUT/$c.json" ] && [ -f "$OUT/ref-moto.json" ]; then
    python3 "$ROOT/scripts/bench-compare.py" "$OUT/$c.json" "$OUT/ref-moto.json" >"$OUT/compare-$c.md" || true
  fi
done
openssl_arg=()
[ -f "$OUT/openssl-sha256.txt" ] && openssl_arg=(--openssl "$OUT/openssl-sha256.txt")
python3 "$HELPER" summary "$OUT" --info "$OUT/run-info.txt" "${openssl_arg[@]}" >"$OUT/summary.md" || { say "summary failed"; failed=1; }
log "summary (bench-results/scaleout/summary.md)"
cat "$OUT/summary.md"
log "done in $(($(date +%s) - t0)) s; results in bench-results/scaleout/"
exit "$failed"
