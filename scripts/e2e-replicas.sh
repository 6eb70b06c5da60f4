#!/usr/bin/env bash
# End-to-end test of Berth's scale-out mode: two stateless replicas, A and B,
# sharing one PostgreSQL database and one S3 bucket, with real clients
# (skopeo, curl) and the berth CLI.
#
#   scripts/e2e-replicas.sh [-v] [-k]
#
# Starts, all on 127.0.0.1 and with every file of its own under one
# `mktemp -d` dir (removed on exit unless --keep):
#   - a throwaway PostgreSQL cluster (scripts/lib/postgres.sh; Debian's
#     postgresql package is installed when missing, which needs root);
#   - s3s-fs over a directory (scripts/lib/s3.sh; built with cargo into
#     target/tools once, about 2 minutes, when missing);
#   - two "$BERTH_BIN serve --listen 127.0.0.1:0" processes, each with its own
#     --data-dir and the same scale-out configuration (BERTH_STORAGE__* for
#     the bucket, BERTH_META__* for the database, a GC grace period of 1 s,
#     every scheduled job off). The binary is pinned for the run (a hard link
#     or a copy under the temp dir), so a rebuild meanwhile changes nothing.
# The berth CLI (gc, fsck, user, grant) runs with the same configuration.
#
# What it proves, one group each (PASS/FAIL/SKIP per step):
#   1 skopeo pushes a 3-layer image and a multi-arch index through A and
#     copies both back through B at once: digests and bytes identical.
#   2 a chunked upload that alternates replicas (POST on A, PATCH on B, A, B,
#     A, final PUT on B, each request sent to the Location of the previous
#     answer on the other replica): the blob is served by both with its
#     digest; a manifest using it, pushed on A, is served by B byte for byte.
#   3 kill -9 of A in the middle of a chunked upload (two PATCHes answered
#     202, a third still streaming): B reports a Range that keeps every
#     acknowledged byte, takes the rest of the session (once A's lease on it
#     has run out: 416 until then) and commits it; the blob has its digest;
#     A, restarted, serves it too.
#   4 garbage collection while both replicas serve pushes: garbage first
#     (images deleted by digest and by tag), then for 16 s four pushers
#     (skopeo through A, skopeo through B, curl with blobs through A and the
#     manifest through B, and the reverse) push images that share layers with
#     the garbage and delete some of their own earlier images (and go on
#     until each collector below has finished at least two runs), while
#     POST /api/v1/gc runs in a loop on A, and on B alternating with
#     `berth gc`. Every push answered 201 that was not deleted afterwards is
#     then pullable whole from both replicas (every blob, digests checked),
#     every deleted one is gone from both; after a final GC past the grace
#     period the blobs in the bucket are exactly the blobs the registry's
#     tags reach (on A and on B alike), the database records as many, and
#     `berth fsck --json` reports no problem.
#   5 token auth with no signing key configured: the replicas share the one
#     the first of them stored in PostgreSQL
#     replicas, restarted with it: a token from A's /v2/token pushes on B and
#     B's token pulls on A; no token, or a token with a forged signature, is
#     refused.
#
# Options:  -v, --verbose  print the output of every step as it runs
#           -k, --keep     keep the temp dir (logs, replica data, a copy of the
#                          bucket, the PostgreSQL and s3s-fs logs)
# Env:      BERTH_BIN (default ${CARGO_TARGET_DIR:-<repo>/target}/debug/berth,
#           built with `cargo build -p berth-server` when missing), E2E_KEEP=1
#           (= --keep), BERTH_TOOLS_DIR (where s3s-fs is installed)
#
# Needs on the PATH: curl jq skopeo tar gzip sha256sum cmp timeout find comm
# (scripts/install-deps.sh), cargo (for s3s-fs, once).
#
# Output: one line per step (PASS/FAIL/SKIP, with the step's log on FAIL), a
# result per group, the end of both replicas' logs when a step failed, and
# last exactly one line
#   E2E-REPLICAS: N passed, M failed, K skipped
# Exit status 1 if any step failed.
set -euo pipefail
shopt -s inherit_errexit   # errors inside $(...) count too

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_IF_MISSING=0
if [[ -z ${BERTH_BIN:-} ]]; then
  BERTH_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/berth
  BUILD_IF_MISSING=1
fi

# Options, tools, the temp dir and its exit trap, the step runner and its
# helpers, OCI layouts and the summary: shared with the other e2e scripts.
E2E_NAME=e2e-replicas
E2E_LABEL=E2E-REPLICAS
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
# shellcheck source=lib/s3.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/s3.sh"
# shellcheck source=lib/postgres.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/postgres.sh"
parse_args "$@"

require_tools "scripts/install-deps.sh" \
  curl jq skopeo tar gzip sha256sum cmp timeout stat head mktemp find comm sort od base64 awk

if [[ ! -x $BERTH_BIN && $BUILD_IF_MISSING == 1 ]]; then
  echo "e2e-replicas: $BERTH_BIN missing: cargo build -p berth-server" >&2
  (cd "$REPO_ROOT" && cargo build -p berth-server >&2) || setup_fail "cargo build -p berth-server failed"
fi
[[ -x $BERTH_BIN ]] || setup_fail "Berth binary not found or not executable: $BERTH_BIN (cargo build -p berth-server, or set BERTH_BIN)"

# ------------------------------------------------------------- services ----
PG_PARENT=${TMPDIR:-/tmp}   # the postgres user must be able to enter it; $T is private
S3_PREFIX=berth-e2e-replicas
GRACE_SECS=1

make_temp_dir
mkdir -p "$T/bin" "$T/home" "$T/gc"
stop_on_exit PID_A berth-A 10
stop_on_exit PID_B berth-B 10

# At exit: the replicas first (they use the database and the bucket), then
# s3s-fs and PostgreSQL (their logs, and with --keep the bucket, copied into
# $T first), then the common clean-up, which removes $T.
on_exit() {
  local rc=$?
  set +e
  stop_background
  stop_pid "$PID_A" berth-A 10
  stop_pid "$PID_B" berth-B 10
  PID_A="" PID_B=""
  [[ -z $S3_DIR || ! -f $S3_DIR/s3s-fs.log ]] || cp "$S3_DIR/s3s-fs.log" "$T/logs/s3s-fs.log"
  [[ $KEEP != 1 || -z $S3_DIR ]] || cp -a "$S3_DIR/data" "$T/bucket-copy"
  s3_stop
  [[ -z $PG_TEST_LOG || ! -f $PG_TEST_LOG ]] || cp "$PG_TEST_LOG" "$T/logs/postgres.log"
  pg_test_stop
  (exit "$rc")
  cleanup
}
trap on_exit EXIT

# Background jobs of a step (group 4's pushers and collectors), listed in
# $T/state/bg.pids while they run: asynchronous commands ignore SIGINT, so
# an interrupted run stops them here (SIGTERM), those still running only.
bg_started() { printf '%s\n' "$@" >> "$T/state/bg.pids"; }
bg_done() { rm -f "$T/state/bg.pids"; }
stop_background() {
  local p
  [[ -f $T/state/bg.pids ]] || return 0
  while read -r p; do
    if grep -qs e2e-replicas "/proc/$p/cmdline"; then kill -TERM "$p" 2>/dev/null; fi
  done < "$T/state/bg.pids"
  rm -f "$T/state/bg.pids"
}

pg_test_install >&2 || setup_fail "PostgreSQL is not installed and could not be installed"
pg_test_start "$PG_PARENT" || setup_fail "could not start PostgreSQL"
s3_start || setup_fail "could not start s3s-fs"
trap on_exit EXIT   # s3_start chained its own stop in front; on_exit calls s3_stop itself
BUCKET_DIR=$S3_DIR/data/$BERTH_TEST_S3_BUCKET/$S3_PREFIX

# The binary under test, pinned: a rebuild of BERTH_BIN during the run must
# not change what a restarted replica runs.
ln "$BERTH_BIN" "$T/bin/berth" 2>/dev/null || cp "$BERTH_BIN" "$T/bin/berth"
BERTH_BIN=$T/bin/berth

# The configuration of both replicas and of the CLI: berth_setup keeps the
# caller's BERTH_* and RUST_LOG out; the AWS_* variables go too (what the S3
# client would otherwise read from them), and so does the external
# validation service's URL.
unset_aws=()
while read -r v; do unset_aws+=(-u "$v"); done < <(compgen -e | grep '^AWS_' || true)
berth_setup -u VALIDATION_SERVICE_URL "${unset_aws[@]}" \
  BERTH_STORAGE__BACKEND=s3 \
  BERTH_STORAGE__S3__ENDPOINT="$BERTH_TEST_S3_ENDPOINT" \
  BERTH_STORAGE__S3__BUCKET="$BERTH_TEST_S3_BUCKET" \
  BERTH_STORAGE__S3__REGION="$BERTH_TEST_S3_REGION" \
  BERTH_STORAGE__S3__ACCESS_KEY_ID="$BERTH_TEST_S3_ACCESS_KEY" \
  BERTH_STORAGE__S3__SECRET_ACCESS_KEY="$BERTH_TEST_S3_SECRET_KEY" \
  BERTH_STORAGE__S3__ALLOW_HTTP=true \
  BERTH_STORAGE__S3__PREFIX="$S3_PREFIX" \
  BERTH_META__BACKEND=postgres \
  BERTH_META__URL="$BERTH_TEST_POSTGRES_URL" \
  BERTH_GC__GRACE_SECS="$GRACE_SECS" \
  BERTH_GC__INTERVAL_SECS=0 \
  BERTH_RETENTION__INTERVAL_SECS=0 \
  BERTH_LIFECYCLE__EXPIRY_INTERVAL_SECS=0 \
  BERTH_LOG__FORMAT=json
printf '# The scale-out settings come from BERTH_* variables (scripts/e2e-replicas.sh).\n' > "$CFG"

# start_replica NAME WANT: berth serve as replica NAME (A or B) on a port the
# kernel picks, with its own data dir and a new log $T/logs/berth-NAME-N.log
# (N counts its starts); sets PID_NAME, REG_NAME (host:port), URL_NAME and
# LOG_NAME once GET /v2/ answers WANT. Returns 1 with a message otherwise.
# Runs in the main shell, so that the exit trap knows the PID.
declare -A STARTS=()
start_replica() {
  local name=$1 want=$2 n log pid reg code="" i
  n=$(( ${STARTS[$name]:-0} + 1 ))
  STARTS[$name]=$n
  log=$T/logs/berth-$name-$n.log
  mkdir -p "$T/data-$name"
  "${BERTH_ENV[@]}" "$BERTH_BIN" serve --config "$CFG" --listen 127.0.0.1:0 \
    --data-dir "$T/data-$name" > "$log" 2>&1 < /dev/null &
  pid=$!
  printf -v "PID_$name" '%s' "$pid"
  printf -v "LOG_$name" '%s' "$log"
  reg=$(wait_for_line "$log" 'listening on 127\.0\.0\.1:[0-9]+' "$pid" 60) || {
    tail -n 30 "$log" | sed 's/^/     | /'
    echo "e2e-replicas: replica $name did not log 'listening on 127.0.0.1:PORT' within 60 s (log: $log)"
    return 1
  }
  reg=${reg#listening on }
  printf -v "REG_$name" '%s' "$reg"
  printf -v "URL_$name" '%s' "http://$reg"
  for ((i = 0; i < 300; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$reg/v2/" || true)
    [[ $code == "$want" ]] && break
    sleep 0.1
  done
  if [[ $code != "$want" ]]; then
    echo "e2e-replicas: GET http://$reg/v2/ on replica $name answered ${code:-nothing}, expected $want"
    return 1
  fi
  echo "e2e-replicas: replica $name (pid $pid) at http://$reg, start $n, log $log"
}

# stop_replica NAME: SIGTERM, up to 15 s (then SIGKILL), in the main shell.
stop_replica() {
  local var=PID_$1
  stop_pid "${!var}" "berth-$1" 15
  printf -v "$var" '%s' ""
}

start_replica A 200 || setup_fail "replica A did not start"
start_replica B 200 || setup_fail "replica B did not start"
echo "e2e-replicas: PostgreSQL $BERTH_TEST_POSTGRES_URL, bucket $BERTH_TEST_S3_BUCKET/$S3_PREFIX at $BERTH_TEST_S3_ENDPOINT"

# The clients: their own HOME (skopeo's blob-info cache), temp dir, auth file.
export HOME=$T/home
unset XDG_CONFIG_HOME XDG_DATA_HOME XDG_RUNTIME_DIR
client_env "$T/auth.json"

# --------------------------------------------------------- step helpers ----
# req METHOD URL OUT [curl args...]: one request; the answer's headers in
# OUT.h, its body in OUT.b; prints the status (000 when there was none).
req() {
  local m=$1 u=$2 out=$3 code
  shift 3
  if [[ $m == HEAD ]]; then set -- -I "$@"; else set -- -X "$m" "$@"; fi
  code=$(curl -sS --max-time 60 -D "$out.h" -o "$out.b" -w '%{http_code}' "$@" "$u") || true
  echo "${code:-000}"
}
# hdr OUT NAME: the value of header NAME in OUT.h (the last one)
hdr() { { grep -i "^$2:" "$1.h" || true; } | tail -n 1 | cut -d: -f2- | sed 's/^ *//' | tr -d '\r'; }
# answer OUT: the status line, the headers that matter and the body, for the log
answer() {
  { head -n 1 "$1.h"; grep -iE '^(location|range|docker-upload-uuid|docker-content-digest|content-length):' "$1.h"; } \
    | tr -d '\r' | sed 's/^/    /'
  [[ ! -s $1.b ]] || echo "    body: $(head -c 400 "$1.b")"
}
# loc_path LOCATION: its path (and query), whatever replica it names
loc_path() {
  local l=$1
  if [[ $l == http://* || $l == https://* ]]; then l=/${l#*://*/}; fi
  echo "$l"
}
with_digest() { # url digest -> the url with ?digest= (or &digest=)
  if [[ $1 == *\?* ]]; then echo "$1&digest=$2"; else echo "$1?digest=$2"; fi
}
# chunk FILE START LEN OUT: bytes START..START+LEN-1 of FILE into OUT
chunk() { dd if="$1" of="$4" bs=64K iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none; }
url_of() { local v=URL_$1; echo "${!v}"; }
reg_of() { local v=REG_$1; echo "${!v}"; }
other() { if [[ $1 == A ]]; then echo B; else echo A; fi; }

ACCEPT_ALL="$MT_MANIFEST, $MT_INDEX, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

# get_blob REPLICA REPO DIGEST: GET the blob (following a redirect to the
# store) and check its digest; prints its size.
get_blob() {
  local url out code
  url=$(url_of "$1")
  out=$(mktemp "$T/work/blob.XXXXXX")
  code=$(curl -sSL --max-time 60 -o "$out" -w '%{http_code}' "$url/v2/$2/blobs/$3") || code=000
  [[ $code == 200 ]] || fail "GET /v2/$2/blobs/$3 on replica $1 answered $code"
  expect_eq "sha256:$(sha_of "$out")" "$3" "sha256 of GET /v2/$2/blobs/$3 on replica $1"
  stat -c %s "$out"
  rm -f "$out"
}

# get_manifest REPLICA REPO REF DIGEST: GET the manifest; its bytes must hash
# to DIGEST and Docker-Content-Digest must say so; the bytes stay in
# $T/work/manifest.<digest>.
get_manifest() {
  local url out code
  url=$(url_of "$1")
  out=$T/work/m.$BASHPID
  code=$(req GET "$url/v2/$2/manifests/$3" "$out" -H "Accept: $ACCEPT_ALL")
  [[ $code == 200 ]] || { answer "$out"; fail "GET /v2/$2/manifests/$3 on replica $1 answered $code"; }
  expect_eq "sha256:$(sha_of "$out.b")" "$4" "sha256 of GET /v2/$2/manifests/$3 on replica $1"
  expect_eq "$(hdr "$out" docker-content-digest)" "$4" "Docker-Content-Digest of GET /v2/$2/manifests/$3 on replica $1"
  mv "$out.b" "$T/work/manifest.${4#sha256:}"
}

# pull_image REPLICA REPO REF DIGEST: the manifest (an index: each child
# too) and every blob it uses, each checked against its digest; prints
# "N blobs".
pull_image() {
  local r=$1 repo=$2 ref=$3 want=$4 m d n=0 child
  get_manifest "$r" "$repo" "$ref" "$want"
  m=$T/work/manifest.${want#sha256:}
  if jq -e '.manifests' "$m" >/dev/null; then
    for child in $(jq -r '.manifests[].digest' "$m"); do
      get_manifest "$r" "$repo" "$child" "$child"
      for d in $(jq -r '.config.digest, .layers[].digest' "$T/work/manifest.${child#sha256:}"); do
        get_blob "$r" "$repo" "$d" >/dev/null
        n=$((n + 1))
      done
    done
  else
    for d in $(jq -r '.config.digest, .layers[].digest' "$m"); do
      get_blob "$r" "$repo" "$d" >/dev/null
      n=$((n + 1))
    done
  fi
  echo "$n blobs"
}

# =========================================================== 1 skopeo ======
step_layouts() {
  build_layout single 3 rep-single
  build_multi rep-multi
  echo "single: $(st single_manifest), multi: $(st multi_index)"
}

step_push_single_a_pull_b() {
  REG=$REG_A push_layout single rep/single:v1
  REG=$REG_B check_remote_manifest rep/single:v1 "$(st single_manifest)"
  SK copy --preserve-digests --src-tls-verify=false "docker://$REG_B/rep/single:v1" "oci:$T/out-single:v1"
  compare_layouts "$T/layout-single" "$T/out-single" "$(st single_manifest)"
}

step_push_multi_a_pull_b() {
  REG=$REG_A push_layout multi rep/multi:v1 --all
  REG=$REG_B check_remote_manifest rep/multi:v1 "$(st multi_index)"
  REG=$REG_B check_remote_manifest "rep/multi@$(st multi_arm64_manifest)" "$(st multi_arm64_manifest)"
  SK copy --all --preserve-digests --src-tls-verify=false "docker://$REG_B/rep/multi:v1" "oci:$T/out-multi:v1"
  compare_layouts "$T/layout-multi" "$T/out-multi" "$(st multi_index)"
}

begin_client "skopeo A->B"
step 1.1 "build OCI layouts (3-layer image; index over amd64 + arm64)" step_layouts
step 1.2 "skopeo push rep/single:v1 through A, copy back through B at once: bytes identical" step_push_single_a_pull_b
group
step 1.3 "skopeo push the index rep/multi:v1 (--all) through A, copy back through B: bytes identical" step_push_multi_a_pull_b

# ====================================================== 2 chunked upload ===
# patch_on REPLICA LOCATION FILE START LEN OUT: PATCH one chunk to the
# session at LOCATION (the path of the last answer's Location) on REPLICA;
# checks 202, Range and the session's id; prints the next Location.
patch_on() {
  local r=$1 loc=$2 f=$3 start=$4 len=$5 out=$6 code url uuid i
  uuid=${loc##*/}
  url=$(url_of "$r")$(loc_path "$loc")
  chunk "$f" "$start" "$len" "$out.chunk"
  # A session that a killed replica was writing stays claimed until that
  # replica's lease runs out (30 s after its last renewal): 416 "another
  # request is writing", nothing written. Try again until it is free.
  for ((i = 0; i < 90; i++)); do
    code=$(req PATCH "$url" "$out" -H 'Content-Type: application/octet-stream' \
      -H "Content-Range: $start-$((start + len - 1))" --data-binary @"$out.chunk")
    [[ $code == 416 ]] && grep -q 'another request is writing' "$out.b" || break
    ((i > 0)) || echo "PATCH on $r: the session is still claimed (a dead replica's lease); waiting for it to run out" >&2
    sleep 0.5
  done
  echo "PATCH on $r bytes $start-$((start + len - 1)) -> $code" >&2
  answer "$out" >&2
  expect_eq "$code" 202 "PATCH bytes $start-$((start + len - 1)) on replica $r"
  expect_eq "$(hdr "$out" range)" "0-$((start + len - 1))" "Range after the PATCH on replica $r"
  expect_eq "$(hdr "$out" docker-upload-uuid)" "$uuid" "Docker-Upload-UUID after the PATCH on replica $r"
  hdr "$out" location
}

step_chunked_alternating() {
  local f=$T/work/chunked.bin out=$T/work/chunked sizes=(262144 300001 123457 200000 77777) total=0 s
  local off=0 i loc d code who order=(B A B A) uuid size
  for s in "${sizes[@]}"; do total=$((total + s)); done
  head -c "$total" /dev/urandom > "$f"
  d=sha256:$(sha_of "$f")
  code=$(req POST "$URL_A/v2/rep/chunked/blobs/uploads/" "$out" -H 'Content-Length: 0')
  echo "POST on A -> $code"; answer "$out"
  expect_eq "$code" 202 "POST /v2/rep/chunked/blobs/uploads/ on replica A"
  loc=$(hdr "$out" location)
  uuid=$(hdr "$out" docker-upload-uuid)
  [[ -n $loc && ${loc##*/} == "$uuid" ]] || fail "POST on A: Location '$loc' does not end in the Docker-Upload-UUID '$uuid'"
  for i in 0 1 2 3; do
    who=${order[i]}
    loc=$(patch_on "$who" "$loc" "$f" "$off" "${sizes[i]}" "$out")
    off=$((off + sizes[i]))
  done
  # the last chunk with the final PUT, on B
  chunk "$f" "$off" "${sizes[4]}" "$out.chunk"
  code=$(req PUT "$(with_digest "$URL_B$(loc_path "$loc")" "$d")" "$out" -H 'Content-Type: application/octet-stream' \
    -H "Content-Range: $off-$((total - 1))" --data-binary @"$out.chunk")
  echo "PUT ?digest= on B with bytes $off-$((total - 1)) -> $code"; answer "$out"
  expect_eq "$code" 201 "final PUT on replica B"
  expect_eq "$(hdr "$out" docker-content-digest)" "$d" "Docker-Content-Digest of the final PUT"
  for who in A B; do
    size=$(get_blob "$who" rep/chunked "$d")
    expect_eq "$size" "$total" "size of the blob served by replica $who"
    code=$(req HEAD "$(url_of "$who")/v2/rep/chunked/blobs/$d" "$out")
    expect_eq "$code $(hdr "$out" content-length)" "200 $total" "HEAD /v2/rep/chunked/blobs/$d on replica $who"
  done
  echo "blob $d ($total bytes, 6 requests alternating A/B) served by A and B"
  st_set chunked_blob "$d"
  st_set chunked_size "$total"
}

step_chunked_manifest() {
  local d size cfg man md out=$T/work/cm code who r
  d=$(st chunked_blob)
  size=$(st chunked_size)
  cfg=$T/work/chunked-config.json
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Labels":{"e2e":"%s"}}}' "$RANDOM$RANDOM" > "$cfg"
  code=$(req POST "$URL_B/v2/rep/chunked/blobs/uploads/?digest=sha256:$(sha_of "$cfg")" "$out" \
    -H 'Content-Type: application/octet-stream' --data-binary @"$cfg")
  expect_eq "$code" 201 "monolithic upload of the config on replica B"
  man=$T/work/chunked-manifest.json
  jq -cjn --arg mt "$MT_MANIFEST" --arg cmt "$MT_CONFIG" --arg cd "sha256:$(sha_of "$cfg")" \
    --argjson cs "$(stat -c %s "$cfg")" --arg lmt "$MT_LAYER" --arg ld "$d" --argjson ls "$size" \
    '{schemaVersion: 2, mediaType: $mt, config: {mediaType: $cmt, digest: $cd, size: $cs},
      layers: [{mediaType: $lmt, digest: $ld, size: $ls}]}' > "$man"
  md=sha256:$(sha_of "$man")
  code=$(req PUT "$URL_A/v2/rep/chunked/manifests/v1" "$out" -H "Content-Type: $MT_MANIFEST" --data-binary @"$man")
  echo "PUT /v2/rep/chunked/manifests/v1 on A -> $code"; answer "$out"
  expect_eq "$code" 201 "PUT /v2/rep/chunked/manifests/v1 on replica A"
  expect_eq "$(hdr "$out" docker-content-digest)" "$md" "Docker-Content-Digest of the manifest PUT"
  for who in B A; do
    r=$(pull_image "$who" rep/chunked v1 "$md")
    echo "replica $who: $r"
    get_manifest "$who" rep/chunked "$md" "$md"
    cmp "$man" "$T/work/manifest.${md#sha256:}" || fail "the manifest replica $who serves differs from the one pushed"
  done
  code=$(curl -sS --max-time 30 "$URL_B/v2/rep/chunked/tags/list" | jq -c .tags)
  expect_eq "$code" '["v1"]' "tags of rep/chunked listed by replica B"
  st_set chunked_manifest "$md"
}

begin_client "chunked A<->B"
step 2.1 "POST on A, PATCH on B A B A, PUT on B (Location sent to the other replica): blob served by both" step_chunked_alternating
step 2.2 "a manifest using that blob, pushed on A, pulled on B (and A): same bytes" step_chunked_manifest

# ================================================ 3 kill -9 mid-upload ====
KILL_SIZES=(300000 250000)   # acknowledged on A
INFLIGHT=2000000              # streaming (200 kB/s) when A dies
REST=(400000 123456)          # sent to B afterwards

step_kill_a_mid_upload() {
  local f=$T/work/killed.bin out=$T/work/killed total off=0 i loc code cpid rc=0 s pid=$PID_A
  total=$((KILL_SIZES[0] + KILL_SIZES[1] + INFLIGHT + REST[0] + REST[1]))
  head -c "$total" /dev/urandom > "$f"
  st_set killed_blob "sha256:$(sha_of "$f")"
  st_set killed_size "$total"
  code=$(req POST "$URL_A/v2/rep/killed/blobs/uploads/" "$out" -H 'Content-Length: 0')
  expect_eq "$code" 202 "POST /v2/rep/killed/blobs/uploads/ on replica A"
  loc=$(hdr "$out" location)
  for s in "${KILL_SIZES[@]}"; do
    loc=$(patch_on A "$loc" "$f" "$off" "$s" "$out")
    off=$((off + s))
  done
  st_set killed_location "$loc"
  st_set killed_acked "$off"
  echo "acknowledged on A: bytes 0-$((off - 1))"
  # a third chunk, streamed slowly: A dies while it reads the body
  chunk "$f" "$off" "$INFLIGHT" "$out.inflight"
  curl -sS --max-time 30 --limit-rate 200k -o "$out.inflight.b" -w '%{http_code}' -X PATCH \
    -H 'Content-Type: application/octet-stream' -H "Content-Range: $off-$((off + INFLIGHT - 1))" \
    --data-binary @"$out.inflight" "$URL_A$(loc_path "$loc")" > "$out.inflight.code" 2> "$out.inflight.err" &
  cpid=$!
  sleep 1.5
  kill -0 "$cpid" 2>/dev/null || fail "the streaming PATCH ended before A was killed: $(cat "$out.inflight.code" "$out.inflight.err")"
  echo "kill -9 replica A (pid $pid) while the PATCH of bytes $off-$((off + INFLIGHT - 1)) streams"
  kill -KILL "$pid"
  # Dead is gone, a zombie (Z) or exiting (X). Read the state once per look:
  # the process may be reaped between two reads of /proc.
  local state=R
  for ((i = 0; i < 100; i++)); do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    [[ -n $state && $state != Z && $state != X ]] || break
    sleep 0.1
  done
  [[ -z $state || $state == Z || $state == X ]] || fail "replica A still runs 10 s after SIGKILL (state $state)"
  wait "$cpid" || rc=$?
  echo "the streaming PATCH on A ended: exit $rc, status '$(cat "$out.inflight.code")', $(cat "$out.inflight.err")"
  [[ $(cat "$out.inflight.code") != 202 ]] || fail "A answered 202 to the streaming PATCH before it died (the test needs it unanswered)"
}

step_continue_on_b() {
  local f=$T/work/killed.bin out=$T/work/killed-b loc acked total code range end off s d
  loc=$(st killed_location)
  acked=$(st killed_acked)
  total=$(st killed_size)
  d=$(st killed_blob)
  code=$(req GET "$URL_B$(loc_path "$loc")" "$out")
  echo "GET upload status on B -> $code"; answer "$out"
  expect_eq "$code" 204 "GET $(loc_path "$loc") on replica B"
  range=$(hdr "$out" range)
  [[ $range =~ ^0-([0-9]+)$ ]] || fail "Range '$range' of the session on replica B is not 0-N"
  end=$((BASH_REMATCH[1] + 1))
  (( end >= acked )) || fail "replica B reports $end bytes in the session, but A acknowledged $acked: acknowledged bytes are lost"
  (( end <= acked + INFLIGHT )) || fail "replica B reports $end bytes, more than A was ever sent ($((acked + INFLIGHT)))"
  if (( end == acked )); then
    echo "B resumes at byte $end: exactly what A acknowledged (the unanswered PATCH left nothing)"
  else
    note "B resumes at byte $end: $((end - acked)) bytes of the unanswered PATCH were kept"
  fi
  loc=$(hdr "$out" location)
  off=$end
  # the rest in two chunks on B, the last one with the PUT
  s=$((total - off - REST[1]))
  loc=$(patch_on B "$loc" "$f" "$off" "$s" "$out")
  off=$((off + s))
  chunk "$f" "$off" "$((total - off))" "$out.chunk"
  code=$(req PUT "$(with_digest "$URL_B$(loc_path "$loc")" "$d")" "$out" -H 'Content-Type: application/octet-stream' \
    -H "Content-Range: $off-$((total - 1))" --data-binary @"$out.chunk")
  echo "PUT ?digest= on B -> $code"; answer "$out"
  expect_eq "$code" 201 "final PUT of the resumed session on replica B"
  s=$(get_blob B rep/killed "$d")
  expect_eq "$s" "$total" "size of the blob replica B serves"
}

step_restarted_a_serves() {
  local total d size r
  total=$(st killed_size)
  d=$(st killed_blob)
  size=$(get_blob A rep/killed "$d")
  expect_eq "$size" "$total" "size of the blob the restarted replica A serves"
  r=$(pull_image A rep/chunked v1 "$(st chunked_manifest)")
  echo "replica A (restarted): rep/chunked:v1 $r"
}

begin_client "kill -9"
# The shell reports the killed job ("... Killed ...") on its stderr: not here.
exec 3>&2 2>>"$T/logs/3.1.shell.log"
step 3.1 "chunked upload on A: 2 PATCHes answered 202, a 3rd streaming, then kill -9 A" step_kill_a_mid_upload
group
# The main shell is A's parent: reap it, then start it again (same
# configuration; the port is a new one, which the kernel picks).
if [[ -n $PID_A ]] && { ! kill -0 "$PID_A" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$PID_A/stat" 2>/dev/null) == Z ]]; }; then
  wait "$PID_A" 2>/dev/null || true
  PID_A=""
fi
exec 2>&3 3>&-
step 3.2 "B reads the session's Range (nothing acknowledged lost), PATCHes the rest, PUT: blob digest right" step_continue_on_b
group
if [[ -n $PID_A ]]; then stop_replica A; fi   # 3.1 failed before the kill: restart anyway
t0=$(date +%s.%N)
if start_replica A 200 > "$T/logs/3.3.log" 2>&1; then
  record PASS 3.3 "replica A restarts with the same configuration" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  step 3.4 "the restarted A serves the resumed blob and rep/chunked:v1" step_restarted_a_serves
else
  record FAIL 3.3 "replica A restarts with the same configuration"
  sed 's/^/     | /' "$T/logs/3.3.log"
fi

# ================================================ 4 GC during pushes ======
POOL=10          # shared layers
GC_SECS=16       # how long pushers and collectors run together, at least
GC_MIN_RUNS=2    # collections each collector completes, at least
GC_EXTRA_SECS=60 # how much longer than GC_SECS they may take for that

pool_layer() { cat "$T/state/pool.$1"; }

# compose_image DIR PREFIX POOL-INDEX...: an OCI layout in DIR, tagged v1, of
# an image made of the given pool layers plus one layer of its own; prints
# the manifest digest.
compose_image() {
  local L=$1 prefix=$2 layers="[]" i l d
  shift 2
  mkdir -p "$L/blobs/sha256"
  for i in "$@"; do
    l=$(pool_layer "$i")
    d=$(jq -r '.desc.digest' <<<"$l")
    ln -f "$T/layout-pool/blobs/sha256/${d#sha256:}" "$L/blobs/sha256/${d#sha256:}"
    layers=$(jq -c --argjson l "$l" '. + [$l]' <<<"$layers")
  done
  l=$(make_layer "$L" "$prefix-own")
  layers=$(jq -c --argjson l "$l" '. + [$l]' <<<"$layers")
  d=$(image_of_layers "$L" amd64 "" "$prefix" "$layers")
  write_layout_index "$L" "$(jq -c 'del(.platform, .config)' <<<"$d")" v1
  jq -r .digest <<<"$d"
}

# push_curl LAYOUT REPO TAG BLOB-REPLICA MANIFEST-REPLICA: each blob through
# BLOB-REPLICA (HEAD; a monolithic POST ?digest= when missing), then the
# manifest through MANIFEST-REPLICA. Fails with the answer that stopped it.
push_curl() {
  local L=$1 repo=$2 tag=$3 bu mu man d code out trail=""
  bu=$(url_of "$4")
  mu=$(url_of "$5")
  out=$(mktemp "$T/work/push.XXXXXX")
  man=$(jq -r '.manifests[0].digest' "$L/index.json")
  # what happened to each blob, and when, for the message of a refused push
  for d in $(jq -r '.config.digest, .layers[].digest' "$L/blobs/sha256/${man#sha256:}"); do
    code=$(req HEAD "$bu/v2/$repo/blobs/$d" "$out")
    trail+="${d:7:12} HEAD $code $(date +%T.%3N)"
    if [[ $code == 200 ]]; then trail+="; "; continue; fi
    code=$(req POST "$bu/v2/$repo/blobs/uploads/?digest=$d" "$out" -H 'Content-Type: application/octet-stream' \
      --data-binary @"$L/blobs/sha256/${d#sha256:}")
    trail+=", POST $code $(date +%T.%3N); "
    [[ $code == 201 ]] || { echo "POST blob $d on $4 -> $code $(head -c 300 "$out.b") [$trail]"; return 1; }
  done
  code=$(req PUT "$mu/v2/$repo/manifests/$tag" "$out" -H "Content-Type: $MT_MANIFEST" \
    --data-binary @"$L/blobs/sha256/${man#sha256:}")
  [[ $code == 201 ]] || { echo "PUT manifest $repo:$tag on $5 -> $code at $(date +%T.%3N) $(head -c 300 "$out.b") [$trail]"; return 1; }
  [[ $(hdr "$out" docker-content-digest) == "$man" ]] || { echo "PUT manifest $repo:$tag on $5: Docker-Content-Digest $(hdr "$out" docker-content-digest), not $man"; return 1; }
  rm -f "$out" "$out.h" "$out.b"
}

# pusher ID KIND BLOB-REPLICA MANIFEST-REPLICA DELETE-BY DEADLINE (in the
# background): pushes gc/ID:iN, N = 1, 2, ... until DEADLINE has passed and
# every collector is done (so that every collection overlaps pushes), but
# not past DEADLINE + GC_EXTRA_SECS; each image two
# random pool layers plus its own; after every even N it deletes image N-1
# through the other replica (DELETE-BY: digest or tag). Files in $T/gc:
# acked.ID "repo tag digest" per push answered 201, deleted.ID "repo tag
# digest how" per deletion answered 202, failed.ID one line per failed push.
pusher() {
  set +eE
  trap - ERR
  local id=$1 kind=$2 bur=$3 mur=$4 del=$5 deadline=$6 i=0 a b L man repo=gc/$1 prev="" prevtag="" rc ref code
  local log=$T/gc/pusher.$id.log
  : > "$T/gc/acked.$id"; : > "$T/gc/deleted.$id"; : > "$T/gc/failed.$id"
  while (( $(date +%s) < deadline )) || { collectors_running && (( $(date +%s) < deadline + GC_EXTRA_SECS )); }; do
    [[ -d $T/gc ]] || break   # the run ended
    i=$((i + 1))
    a=$((RANDOM % POOL)); b=$(((a + 1 + RANDOM % (POOL - 1)) % POOL))
    L=$T/gc/layout-$id-$i
    man=$(compose_image "$L" "gc-$id-$i" "$a" "$b" 2>>"$log") || { echo "i$i compose failed" >> "$T/gc/failed.$id"; continue; }
    rc=0
    if [[ $kind == skopeo ]]; then
      timeout 60 skopeo --insecure-policy copy --preserve-digests --dest-tls-verify=false --retry-times 0 \
        "oci:$L:v1" "docker://$(reg_of "$bur")/$repo:i$i" >> "$log" 2>&1 || rc=$?
    else
      push_curl "$L" "$repo" "i$i" "$bur" "$mur" >> "$log" 2>&1 || rc=$?
    fi
    if [[ $rc == 0 ]]; then
      echo "$repo i$i $man" >> "$T/gc/acked.$id"
      if (( i % 2 == 0 )) && [[ -n $prev ]]; then
        if [[ $del == digest ]]; then ref=$prev; else ref=$prevtag; fi
        code=$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' -X DELETE \
          "$(url_of "$(other "$mur")")/v2/$repo/manifests/$ref" 2>>"$log") || code=000
        if [[ $code == 202 ]]; then echo "$repo $prevtag $prev $del" >> "$T/gc/deleted.$id"
        else echo "DELETE $repo/manifests/$ref -> $code" >> "$log"; fi
      fi
      prev=$man prevtag=i$i
    else
      echo "i$i $man (exit $rc): $(tail -n 1 "$log")" >> "$T/gc/failed.$id"
      prev="" prevtag=""
    fi
    rm -rf "$L"
  done
}

# collector NAME DEADLINE MODE... (in the background): garbage collection in
# a loop until DEADLINE, and at least GC_MIN_RUNS times (a debug build on a
# busy machine may take several seconds a run), but no run starts after
# DEADLINE + GC_EXTRA_SECS / 2; each run one of MODE in turn: A or B (POST
# /api/v1/gc on that replica) or cli (`berth gc --json`). Each report is a
# line of $T/gc/reports.NAME, each failure one of $T/gc/gc-errors.NAME;
# $T/gc/done.NAME appears at the end.
collector() {
  set +eE
  trap - ERR
  local name=$1 deadline=$2 n=0 mode code out=$T/gc/gc.$1
  shift 2
  local modes=("$@")
  : > "$T/gc/reports.$name"; : > "$T/gc/gc-errors.$name"
  while (( $(date +%s) < deadline )) || (( n < GC_MIN_RUNS && $(date +%s) < deadline + GC_EXTRA_SECS / 2 )); do
    [[ -d $T/gc ]] || break   # the run ended
    mode=${modes[n % ${#modes[@]}]}
    n=$((n + 1))
    if [[ $mode == cli ]]; then
      if B gc --json > "$out.b" 2> "$out.err"; then
        jq -c '{via: "cli"} + .' "$out.b" >> "$T/gc/reports.$name" 2>/dev/null \
          || echo "berth gc --json printed no JSON: $(head -c 300 "$out.b")" >> "$T/gc/gc-errors.$name"
      else
        echo "berth gc --json failed: $(tail -n 3 "$out.err" | tr '\n' ' ')" >> "$T/gc/gc-errors.$name"
      fi
    else
      code=$(req POST "$(url_of "$mode")/api/v1/gc" "$out")
      if [[ $code == 200 ]]; then
        jq -c --arg v "$mode" '{via: $v} + .' "$out.b" >> "$T/gc/reports.$name" 2>/dev/null \
          || echo "POST /api/v1/gc on $mode: 200 without JSON: $(head -c 300 "$out.b")" >> "$T/gc/gc-errors.$name"
      else
        echo "POST /api/v1/gc on $mode -> $code $(head -c 300 "$out.b")" >> "$T/gc/gc-errors.$name"
      fi
    fi
    sleep 0.2
  done
  touch "$T/gc/done.$name"
}
collectors_running() { [[ ! -e $T/gc/done.A || ! -e $T/gc/done.B ]]; }

# wait_bounded SECONDS PID...: waits for the background jobs; kills what is
# still running after SECONDS (and then fails).
wait_bounded() {
  local secs=$1 p left i
  shift
  for ((i = 0; i < secs * 10; i++)); do
    left=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && left=1; done
    [[ $left == 1 ]] || break
    sleep 0.1
  done
  for p in "$@"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      left=2
    fi
    wait "$p" 2>/dev/null || true
  done
  [[ $left != 2 ]] || fail "background jobs still ran $secs s after their deadline"
}

gc_api() { # REPLICA -> the report (POST /api/v1/gc must answer 200)
  local out=$T/work/gc-api code
  code=$(req POST "$(url_of "$1")/api/v1/gc" "$out")
  [[ $code == 200 ]] || fail "POST /api/v1/gc on replica $1 answered $code: $(head -c 400 "$out.b")"
  cat "$out.b"
}

step_garbage() {
  local i L man who d code
  mkdir -p "$T/layout-pool"
  for ((i = 0; i < POOL; i++)); do make_layer "$T/layout-pool" "pool$i" > "$T/state/pool.$i"; done
  # four images over six of the pool layers (and one layer each of their own)
  : > "$T/state/garbage"
  for i in 1 2 3 4; do
    L=$T/layout-garbage$i
    man=$(compose_image "$L" "garbage$i" $(((i - 1) % POOL)) $(((i + 1) % POOL)) $(((i + 3) % POOL)))
    who=A; (( i % 2 )) || who=B
    push_curl "$L" gc/garbage "g$i" "$who" "$(other "$who")" || fail "pushing gc/garbage:g$i failed"
    echo "$man $(jq -r '.layers[-1].digest' "$L/blobs/sha256/${man#sha256:}")" >> "$T/state/garbage"
  done
  # g1 and g2 deleted by digest, g3 and g4 by tag (their manifests are left untagged)
  i=0
  while read -r man d; do
    i=$((i + 1))
    if (( i <= 2 )); then
      code=$(http_code DELETE "$URL_B/v2/gc/garbage/manifests/$man")
      expect_eq "$code" 202 "DELETE /v2/gc/garbage/manifests/$man on replica B"
      expect_eq "$(http_code GET "$URL_A/v2/gc/garbage/manifests/$man" -H "Accept: $MT_MANIFEST")" 404 "GET the deleted gc/garbage@$man on replica A"
    else
      code=$(http_code DELETE "$URL_A/v2/gc/garbage/manifests/g$i")
      expect_eq "$code" 202 "DELETE /v2/gc/garbage/manifests/g$i on replica A"
      expect_eq "$(http_code GET "$URL_B/v2/gc/garbage/manifests/g$i" -H "Accept: $MT_MANIFEST")" 404 "GET the deleted tag gc/garbage:g$i on replica B"
    fi
  done < "$T/state/garbage"
  # past the grace period when the collectors start
  sleep "$((GRACE_SECS + 1))"
}

step_push_during_gc() {
  local deadline pids=() p f n acked failed deleted runs removed errors t0=$SECONDS
  rm -f "$T"/gc/done.*
  deadline=$(( $(date +%s) + GC_SECS ))
  pusher 1 skopeo A A digest "$deadline" & pids+=($!)
  pusher 2 skopeo B B tag "$deadline" & pids+=($!)
  pusher 3 curl A B digest "$deadline" & pids+=($!)
  pusher 4 curl B A tag "$deadline" & pids+=($!)
  collector A "$deadline" A & pids+=($!)
  collector B "$deadline" B cli & pids+=($!)
  bg_started "${pids[@]}"
  wait_bounded $((GC_SECS + GC_EXTRA_SECS + 90)) "${pids[@]}"
  bg_done
  echo "pushers and collectors ran together for $((SECONDS - t0)) s"
  for p in 1 2 3 4; do
    acked=$(wc -l < "$T/gc/acked.$p"); failed=$(wc -l < "$T/gc/failed.$p"); deleted=$(wc -l < "$T/gc/deleted.$p")
    echo "pusher $p: $acked pushes answered 201, $deleted of them deleted afterwards, $failed failed"
    sed 's/^/    failed: /' "$T/gc/failed.$p"
  done
  cat "$T"/gc/acked.[1-4] > "$T/state/acked"
  cat "$T"/gc/deleted.[1-4] > "$T/state/deleted"
  cat "$T"/gc/failed.[1-4] > "$T/state/failed"
  errors=$(cat "$T"/gc/gc-errors.*)
  for f in A B; do
    runs=$(wc -l < "$T/gc/reports.$f")
    removed=$(jq -s 'map(.blobs_removed) | add // 0' "$T/gc/reports.$f")
    echo "collector $f: $runs runs ($(jq -rs 'group_by(.via) | map("\(.[0].via): \(length)") | join(", ")' "$T/gc/reports.$f")), $removed blobs and $(jq -s 'map(.manifests_removed) | add // 0' "$T/gc/reports.$f") manifests removed"
    (( runs >= GC_MIN_RUNS )) || fail "collector $f completed only $runs garbage collections"
  done
  [[ -z $errors ]] || { echo "$errors"; fail "garbage collections failed while pushes ran (above)"; }
  # the configs and own layers of the 2 images deleted by digest in 4.1 (no push uses them again) at least
  removed=$(cat "$T"/gc/reports.[AB] | jq -s 'map(.blobs_removed) | add // 0')
  (( removed >= 4 )) || fail "the collections while pushes ran removed $removed blobs: not even the garbage of 4.1"
  for p in 1 2 3 4; do
    (( $(wc -l < "$T/gc/acked.$p") >= 3 )) || fail "pusher $p got fewer than 3 pushes answered 201 in $GC_SECS s"
  done
  n=$(wc -l < "$T/state/failed")
  if (( n > 0 )); then
    note "$n of $(( $(wc -l < "$T/state/acked") + n )) pushes were refused while the collectors ran (not acknowledged, so allowed): $(cut -d: -f2- "$T/state/failed" | sed -E 's/[0-9a-f]{64}/…/g' | sort | uniq -c | sort -rn | head -n 3 | tr -s ' ' | tr '\n' ';')"
  fi
  note "$(wc -l < "$T/state/acked") pushes acknowledged, $(wc -l < "$T/state/deleted") deleted afterwards; $(cat "$T"/gc/reports.[AB] | jq -s 'map(.blobs_removed) | add // 0') blobs removed by $(cat "$T"/gc/reports.[AB] | wc -l) concurrent collections"
}

# live_images: "repo tag digest" of every acknowledged push not deleted
live_images() {
  awk 'NR == FNR { gone[$1 " " $2] = 1; next } !(($1 " " $2) in gone)' "$T/state/deleted" "$T/state/acked"
}

pull_live_images() { # REPLICA: every live image, whole, by tag and by digest
  local repo tag d n=0
  while read -r repo tag d; do
    pull_image "$1" "$repo" "$tag" "$d" >/dev/null
    get_manifest "$1" "$repo" "$d" "$d"
    n=$((n + 1))
  done < <(live_images)
  echo "$n acknowledged images (not deleted afterwards) pulled whole from replica $1"
}

step_acked_pullable() {
  local repo tag d who how pa pb rc=0
  [[ -s $T/state/acked ]] || fail "no acknowledged push to check"
  # both replicas at the same time
  pull_live_images A > "$T/work/pull-live.A" 2>&1 & pa=$!
  pull_live_images B > "$T/work/pull-live.B" 2>&1 & pb=$!
  wait "$pa" || rc=1
  wait "$pb" || rc=1
  cat "$T/work/pull-live.A" "$T/work/pull-live.B"
  [[ $rc == 0 ]] || fail "an acknowledged image is not pullable whole (above)"
  # what was deleted is gone on both replicas
  while read -r repo tag d how; do
    for who in A B; do
      expect_eq "$(http_code GET "$(url_of "$who")/v2/$repo/manifests/$tag" -H "Accept: $MT_MANIFEST")" 404 \
        "GET /v2/$repo/manifests/$tag (deleted by $how) on replica $who"
      if [[ $how == digest ]]; then
        expect_eq "$(http_code GET "$(url_of "$who")/v2/$repo/manifests/$d" -H "Accept: $MT_MANIFEST")" 404 \
          "GET /v2/$repo/manifests/$d (deleted) on replica $who"
      fi
    done
  done < "$T/state/deleted"
  echo "$(wc -l < "$T/state/deleted") deleted images are gone on both replicas"
}

# reachable_blobs REPLICA: every blob digest the registry's tags reach
# (through the catalog, tags/list, manifests and index children), sorted.
reachable_blobs() {
  local url repos repo tags tag m children child c
  url=$(url_of "$1")
  repos=$(curl -sSf --max-time 30 "$url/v2/_catalog?n=10000" | jq -r '.repositories[]')
  for repo in $repos; do
    tags=$(curl -sSf --max-time 30 "$url/v2/$repo/tags/list" | jq -r '.tags // [] | .[]')
    for tag in $tags; do
      m=$(curl -sSf --max-time 30 -H "Accept: $ACCEPT_ALL" "$url/v2/$repo/manifests/$tag")
      if jq -e .manifests >/dev/null <<<"$m"; then
        children=$(jq -r '.manifests[].digest' <<<"$m")
        for child in $children; do
          c=$(curl -sSf --max-time 30 -H "Accept: $ACCEPT_ALL" "$url/v2/$repo/manifests/$child")
          jq -r '.config.digest, .layers[].digest' <<<"$c"
        done
      else
        jq -r '.config.digest, .layers[].digest' <<<"$m"
      fi
    done
  done > "$T/work/reachable.$1.unsorted"
  sort -u "$T/work/reachable.$1.unsorted"
}

step_final_gc() {
  local i r done=0 out=$T/work/fsck.json pa pb rc=0
  # what the tags reach (nothing pushes any more)
  reachable_blobs A > "$T/work/reachable.A" & pa=$!
  reachable_blobs B > "$T/work/reachable.B" & pb=$!
  wait "$pa" || rc=1
  wait "$pb" || rc=1
  [[ $rc == 0 ]] || fail "walking the tags of replica A or B failed"
  cmp "$T/work/reachable.A" "$T/work/reachable.B" || fail "replicas A and B reach different blobs through their tags"
  # collect (on A, then B, ...) past the grace period until the bucket holds
  # just that: a run may free some blobs only a grace period after it
  # removed their last user
  for i in 1 2 3 4; do
    sleep "$((GRACE_SECS + 1))"
    if (( i % 2 )); then r=$(gc_api A); else r=$(gc_api B); fi
    echo "final gc $i: $r"
    find "$BUCKET_DIR/blobs" -type f -printf 'sha256:%f\n' | sort > "$T/work/bucket.blobs"
    if cmp -s "$T/work/reachable.A" "$T/work/bucket.blobs"; then done=1; break; fi
  done
  if [[ $done != 1 ]]; then
    echo "reachable through tags only:"; comm -23 "$T/work/reachable.A" "$T/work/bucket.blobs" | sed 's/^/    /'
    echo "in the bucket only:"; comm -13 "$T/work/reachable.A" "$T/work/bucket.blobs" | sed 's/^/    /'
    fail "after $i garbage collections the blobs in the bucket are still not the blobs the tags reach"
  fi
  B fsck --json > "$out" || { cat "$out"; fail "berth fsck --json failed (exit status above)"; }
  echo "fsck: $(cat "$out")"
  expect_eq "$(jq -c '.problems' "$out")" "[]" "problems reported by berth fsck --json"
  expect_eq "$(jq '.unrepaired' "$out")" 0 "unrepaired in berth fsck --json"
  expect_eq "$(jq .blobs_checked "$out")" "$(wc -l < "$T/work/bucket.blobs")" "blobs recorded in the database (fsck) vs blob files in the bucket"
  # every acknowledged, undeleted image is among what the tags reach
  local repo tag d
  while read -r repo tag d; do
    grep -qxF "$(jq -r .config.digest "$T/work/manifest.${d#sha256:}")" "$T/work/reachable.A" \
      || fail "the config of $repo:$tag is not reachable after the final gc"
  done < <(live_images)
  echo "$(wc -l < "$T/work/bucket.blobs") blob files in $BUCKET_DIR/blobs = the blobs the tags reach = the blobs the database records"
  note "upload objects left in the bucket: $(find "$BUCKET_DIR/uploads" -type f 2>/dev/null | wc -l)"
}

begin_client "gc during pushes"
step 4.1 "garbage: 4 images over shared layers pushed through A and B, deleted by digest and by tag" step_garbage
step 4.2 "${GC_SECS}+ s: 4 pushers through A and B (skopeo, curl across replicas) while gc runs on A, B and the CLI" step_push_during_gc
step 4.3 "every push answered 201 and not deleted is pullable whole from A and B; deleted ones are gone" step_acked_pullable
step 4.4 "final gc: bucket blobs = blobs the tags reach = blobs the database records; fsck clean" step_final_gc

# ======================================================= 5 shared tokens ===
ALICE_PW="alice-pw-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"

token_from() { # REPLICA SCOPE -> alice's token from that replica's /v2/token
  local out=$T/work/token code t
  code=$(req GET "$(url_of "$1")/v2/token?service=berth&scope=$2" "$out" -u "alice:$ALICE_PW")
  [[ $code == 200 ]] || fail "GET /v2/token on replica $1 as alice answered $code: $(head -c 300 "$out.b")"
  t=$(jq -r .token "$out.b")
  [[ -n $t && $t != null ]] || fail "no token in the answer of replica $1: $(head -c 300 "$out.b")"
  echo "$t"
}

step_user() {
  echo "$ALICE_PW" | B user add alice
  B grant add user:alice 'auth/**' push
  B user list
}

step_token_a_used_on_b() {
  local ta tb out=$T/work/auth code cfg man md bad
  ta=$(token_from A "repository:auth/app:pull,push")
  echo "token from A: ${#ta} characters"
  # with A's token, everything on B
  cfg=$T/work/auth-config.json
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Labels":{"e2e":"auth-%s"}}}' "$RANDOM" > "$cfg"
  code=$(req POST "$URL_B/v2/auth/app/blobs/uploads/?digest=sha256:$(sha_of "$cfg")" "$out" \
    -H "Authorization: Bearer $ta" -H 'Content-Type: application/octet-stream' --data-binary @"$cfg")
  echo "blob upload on B with A's token -> $code"; answer "$out"
  expect_eq "$code" 201 "blob upload on replica B with a token from replica A"
  man=$T/work/auth-manifest.json
  jq -cjn --arg mt "$MT_MANIFEST" --arg cmt "$MT_CONFIG" --arg cd "sha256:$(sha_of "$cfg")" \
    --argjson cs "$(stat -c %s "$cfg")" '{schemaVersion: 2, mediaType: $mt, config: {mediaType: $cmt, digest: $cd, size: $cs}, layers: []}' > "$man"
  md=sha256:$(sha_of "$man")
  code=$(req PUT "$URL_B/v2/auth/app/manifests/v1" "$out" -H "Authorization: Bearer $ta" \
    -H "Content-Type: $MT_MANIFEST" --data-binary @"$man")
  echo "manifest PUT on B with A's token -> $code"; answer "$out"
  expect_eq "$code" 201 "manifest PUT on replica B with a token from replica A"
  # B's token pulls on A
  tb=$(token_from B "repository:auth/app:pull")
  code=$(req GET "$URL_A/v2/auth/app/manifests/v1" "$out" -H "Authorization: Bearer $tb" -H "Accept: $MT_MANIFEST")
  expect_eq "$code" 200 "manifest GET on replica A with a token from replica B"
  expect_eq "sha256:$(sha_of "$out.b")" "$md" "sha256 of the manifest replica A serves"
  # without a token, or with a forged signature: refused
  code=$(req GET "$URL_B/v2/auth/app/manifests/v1" "$out" -H "Accept: $MT_MANIFEST")
  expect_eq "$code" 401 "manifest GET on replica B without a token"
  bad=${ta%.*}.$(printf 'forged-signature-%s' "$RANDOM" | base64 -w0 | tr '+/' '-_' | tr -d '=')
  code=$(req GET "$URL_B/v2/auth/app/manifests/v1" "$out" -H "Authorization: Bearer $bad" -H "Accept: $MT_MANIFEST")
  expect_eq "$code" 401 "manifest GET on replica B with a token whose signature is forged"
}

begin_client "shared tokens"
t0=$(date +%s.%N)
stop_replica A
stop_replica B
# for the replicas and the CLI alike
# No auth.token.key: each replica would make its own key file, so a token of
# one would be refused by the other, but they share the key stored in PostgreSQL.
BERTH_ENV+=(BERTH_AUTH__MODE=token)
if start_replica A 401 > "$T/logs/5.1.log" 2>&1 && start_replica B 401 >> "$T/logs/5.1.log" 2>&1; then
  record PASS 5.1 "A and B restart with auth.mode = token and no key configured" \
    "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  step 5.2 "berth user add alice, grant push on auth/**" step_user
  step 5.3 "A's token pushes on B, B's token pulls on A; no token or a forged one refused" step_token_a_used_on_b
else
  record FAIL 5.1 "A and B restart with auth.mode = token and no key configured"
  sed 's/^/     | /' "$T/logs/5.1.log"
fi

# ============================================================== summary ====
if [[ $FAILED -gt 0 ]]; then
  for r in A B; do
    pv=PID_$r lv=LOG_$r
    if [[ -n ${!pv} ]] && ! kill -0 "${!pv}" 2>/dev/null; then
      rc=0; wait "${!pv}" || rc=$?
      echo "e2e-replicas: replica $r is no longer running (exit status $rc)"
      printf -v "$pv" '%s' ""
    fi
    echo "e2e-replicas: warnings and errors in replica $r's logs ($T/logs/berth-$r-*.log):"
    cat "$T"/logs/berth-"$r"-*.log | grep -E '"level":"(WARN|ERROR)"' | tail -n 20 | cut -c 1-400 | sed 's/^/     | /' || true
    echo "e2e-replicas: last lines of ${!lv}:"
    tail -n 15 "${!lv}" | cut -c 1-400 | sed 's/^/     | /'
  done
fi
BERTH_PID=""
finish group
