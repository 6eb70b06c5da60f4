# shellcheck shell=bash
# Shared by scripts/e2e.sh, scripts/e2e-auth.sh and scripts/e2e-lifecycle.sh:
# the run's set-up (options, tools, temp dir and exit trap, starting berth, the
# clients' environment), the step runner and its PASS/FAIL/SKIP counters,
# helpers for steps, OCI image layouts built with plain tools, podman with its
# own storage, a private dockerd, and the closing summary.
#
# Source it from the main shell before anything else runs, after setting
#   E2E_NAME   prefix of messages ("e2e")     E2E_LABEL  of the closing line ("E2E")
#   E2E_URL_OPTION=1 only where the script takes --url (scripts/e2e.sh)
# then call parse_args "$@", require_tools, make_temp_dir and stop_on_exit.
# The steps rely on the globals these set: VERBOSE, KEEP, T (the temp dir, with
# logs/ state/ tmp/ work/ in it), DOCKER_CLI; REG, URL and BERTH_PID (set by
# start_berth, or by the script that starts berth its own way); PODMAN
# (client_env).
# It defines functions and the counters, and traps INT and TERM; make_temp_dir
# traps EXIT.

E2E_NAME=${E2E_NAME:-e2e}
E2E_LABEL=${E2E_LABEL:-E2E}

# ---------------------------------------------------------------- set-up ----
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# parse_args ARG...: the options every script takes: -v/--verbose (VERBOSE=1),
# -k/--keep (KEEP=1; E2E_KEEP=1 is the default), -h/--help; and --url URL
# where E2E_URL_OPTION=1 (an empty URL: start berth).
parse_args() {
  VERBOSE=0
  KEEP=${E2E_KEEP:-0}
  URL=""
  while [[ $# -gt 0 ]]; do
    if [[ ${E2E_URL_OPTION:-0} == 1 ]]; then
      case $1 in
        --url) [[ $# -ge 2 ]] || { echo "$E2E_NAME: --url needs a value" >&2; exit 2; }; URL=$2; shift 2; continue ;;
        --url=*) URL=${1#--url=}; shift; continue ;;
      esac
    fi
    case $1 in
      -v|--verbose) VERBOSE=1; shift ;;
      -k|--keep) KEEP=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) echo "$E2E_NAME: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
  done
}

# require_tools [--docker-cli] HINT TOOL...: nothing is installed here, so a
# missing tool ends the run before any step, counted as one failed step; HINT
# says where to get them. --docker-cli: the docker client is DOCKER_CLI
# (default /usr/bin/docker), or else the docker on the PATH.
require_tools() {
  local docker=0 hint t missing=()
  if [[ $1 == --docker-cli ]]; then docker=1; shift; fi
  hint=$1
  shift
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if [[ $docker == 1 ]]; then
    DOCKER_CLI=${DOCKER_CLI:-/usr/bin/docker}
    if [[ ! -x $DOCKER_CLI ]]; then
      if command -v docker >/dev/null 2>&1; then DOCKER_CLI=$(command -v docker); else missing+=("docker (client)"); fi
    fi
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "$E2E_NAME: ERROR: required tools not found on PATH: ${missing[*]}" >&2
    echo "$E2E_NAME: install them first ($hint)" >&2
    echo "$E2E_LABEL: 0 passed, 1 failed, 0 skipped"
    exit 1
  fi
}

# make_temp_dir: T, the one dir every file of the run lives in, with logs/
# state/ tmp/ work/ in it. The exit trap stops the daemons (stop_on_exit)
# first, because they write into T, then removes it unless KEEP=1.
make_temp_dir() {
  T=$(mktemp -d "${TMPDIR:-/tmp}/berth-$E2E_NAME.XXXXXX")
  trap cleanup EXIT
  mkdir -p "$T/logs" "$T/state" "$T/tmp" "$T/work"
}

# stop_on_exit VAR NAME SECONDS: the exit trap stops the process whose PID is
# in VAR at that time (stop_pid NAME SECONDS), in the order of these calls. VAR
# starts empty; the script empties it again once it has stopped the process.
E2E_DAEMONS=()
# Paths outside T that a script created (the Docker engine's certs.d entry of
# e2e-tls.sh), removed by the exit trap after the daemons stop.
E2E_EXTRA_PATHS=()
stop_on_exit() {
  printf -v "$1" '%s' ""
  E2E_DAEMONS+=("$1" "$2" "$3")
}

cleanup() {
  local rc=$? i var
  set +e
  for ((i = 0; i < ${#E2E_DAEMONS[@]}; i += 3)); do
    var=${E2E_DAEMONS[i]}
    stop_pid "${!var}" "${E2E_DAEMONS[i + 1]}" "${E2E_DAEMONS[i + 2]}"
  done
  for i in "${E2E_EXTRA_PATHS[@]}"; do rm -rf "$i"; done
  # Nothing here should leave mounts behind (vfs everywhere), but be safe.
  if command -v findmnt >/dev/null 2>&1; then
    findmnt -rn -o TARGET | grep -F "$T/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  fi
  if [[ $KEEP == 1 ]]; then
    echo "$E2E_NAME: kept temp dir $T" >&2
  else
    rm -rf "$T" 2>/dev/null || { chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"; }
  fi
  exit "$rc"
}

# A failure before the first step: one failed step, and the closing line.
setup_fail() {
  echo "FAIL 0 setup: $*"
  echo "$E2E_LABEL: 0 passed, 1 failed, 0 skipped"
  exit 1
}

stop_pid() { # pid name seconds: SIGTERM, wait, then SIGKILL
  local pid=$1 name=$2 secs=${3:-15} i
  [[ -n $pid ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "$E2E_NAME: $name (pid $pid) did not stop after SIGTERM in ${secs}s; sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------- counters ----
PASSED=0 FAILED=0 SKIPPED=0
declare -A CLIENT_RESULT=()
CLIENTS=()
CLIENT=""
GROUP_BROKEN=0

interrupted() { # signal exit-code
  trap - INT TERM
  echo "$E2E_NAME: interrupted by SIG$1"
  echo "$E2E_LABEL: $PASSED passed, $((FAILED + 1)) failed, $SKIPPED skipped"
  exit "$2"
}
trap 'interrupted INT 130' INT
trap 'interrupted TERM 143' TERM

begin_client() { # name
  CLIENT=$1
  GROUP_BROKEN=0
  CLIENTS+=("$1")
  CLIENT_RESULT[$1]=PASS
  echo "== $1"
}
client_mark() { # result: FAIL wins over SKIP wins over PASS
  case $1 in
    FAIL) CLIENT_RESULT[$CLIENT]=FAIL ;;
    SKIP) [[ ${CLIENT_RESULT[$CLIENT]} == FAIL ]] || CLIENT_RESULT[$CLIENT]=SKIP ;;
  esac
}
group() { GROUP_BROKEN=0; }   # a new group of dependent steps

record() { # PASS|FAIL|SKIP id description [seconds]   (for checks done in the main shell)
  case $1 in
    PASS) PASSED=$((PASSED + 1)) ;;
    FAIL) FAILED=$((FAILED + 1)); client_mark FAIL; GROUP_BROKEN=1 ;;
    SKIP) SKIPPED=$((SKIPPED + 1)); client_mark SKIP; GROUP_BROKEN=1 ;;
  esac
  echo "$1 $2 $CLIENT: $3${4:+ (${4}s)}"
}

# step ID DESCRIPTION FUNCTION [ARGS...]
# Runs FUNCTION in a subshell with `set -eE` (errexit really active: the step
# is never called from a conditional context), output to $T/logs/ID.log.
# A failed step marks the rest of its group as not run.
step() {
  local id=$1 desc=$2; shift 2
  local log=$T/logs/$id.log rc start end
  if [[ $GROUP_BROKEN == 1 ]]; then
    echo "---- $id $CLIENT: $desc: not run (an earlier step of this group failed)"
    return 0
  fi
  start=$(date +%s.%N)
  STEP_NOTE_ID=$id
  rm -f "$T/logs/$id.note"
  set +e
  if [[ $VERBOSE == 1 ]]; then
    echo "     $id $CLIENT: $desc ..."
    (
      set -eE
      trap 'echo "ERROR: command failed (exit $?): $BASH_COMMAND" >&2' ERR
      "$@"
    ) 2>&1 | tee "$log" | sed 's/^/     | /'
    rc=${PIPESTATUS[0]}
  else
    (
      set -eE
      trap 'echo "ERROR: command failed (exit $?): $BASH_COMMAND" >&2' ERR
      "$@"
    ) >"$log" 2>&1
    rc=$?
  fi
  set -e
  end=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [[ $rc == 0 ]]; then
    PASSED=$((PASSED + 1))
    echo "PASS $id $CLIENT: $desc (${secs}s)"
    if [[ -s $T/logs/$id.note ]]; then sed 's/^/     note: /' "$T/logs/$id.note"; fi
  elif [[ $rc == 77 ]]; then   # the step decided that the client cannot run here
    SKIPPED=$((SKIPPED + 1))
    client_mark SKIP
    echo "SKIP $id $CLIENT: $desc: $(tail -n 1 "$log")"
    GROUP_BROKEN=1
  else
    FAILED=$((FAILED + 1))
    client_mark FAIL
    GROUP_BROKEN=1
    echo "FAIL $id $CLIENT: $desc (exit $rc, ${secs}s)"
    if [[ $VERBOSE != 1 ]]; then
      echo "     ---- last lines of the step's output:"
      tail -n 30 "$log" | sed 's/^/     | /'
    fi
  fi
  return 0
}

# --- helpers usable inside steps (they run in the step's subshell) ---------
fail() { echo "ERROR: $*" >&2; exit 1; }
skip_here() { echo "$*"; exit 77; }
last_line() { { grep -v '^[[:space:]]*$' "$1" || true; } | tail -n 1; }   # last non-empty line
note() { echo "$*" >>"$T/logs/$STEP_NOTE_ID.note"; echo "note: $*"; }
expect_eq() { # actual expected what
  [[ "$1" == "$2" ]] || fail "$3: expected '$2', got '$1'"
}
st_set() { printf '%s\n' "$2" > "$T/state/$1"; }
st() { [[ -f $T/state/$1 ]] || fail "internal: state '$1' missing (an earlier step did not run)"; cat "$T/state/$1"; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
pushed() { echo "$1" >> "$T/state/pushed_repos"; }   # for the catalog check
http_code() { # method url [curl args...] -> prints the status code
  local m=$1 u=$2; shift 2
  if [[ $m == HEAD ]]; then set -- -I "$@"; else set -- -X "$m" "$@"; fi
  curl -sS --max-time 30 -o /dev/null -w '%{http_code}' "$@" "$u"
}

# run_tool SECONDS NAME CMD... : run a client with a time limit; on failure say
# which command failed (the ERR trap only sees the unexpanded words).
run_tool() {
  local secs=$1 name=$2 rc=0; shift 2
  timeout "$secs" "$@" || rc=$?
  if [[ $rc == 124 ]]; then
    echo "ERROR: $name timed out after ${secs}s: $*" >&2
  elif [[ $rc != 0 ]]; then
    echo "ERROR: $name failed (exit $rc): $*" >&2
  fi
  return $rc
}
SK() { run_tool 120 skopeo skopeo --insecure-policy "$@"; }

# must_fail WHAT REGEX [--stdin INPUT] CMD...: CMD must fail and its output
# match REGEX (ERE, case-insensitive); prints its last line.
must_fail() {
  local what=$1 re=$2 out rc=0 input=""
  shift 2
  if [[ $1 == --stdin ]]; then input=$2; shift 2; fi
  out=$(mktemp "$T/work/fail.XXXXXX")
  timeout 120 "$@" > "$out" 2>&1 <<<"$input" || rc=$?
  cat "$out"
  [[ $rc != 0 ]] || fail "$what succeeded; it must be refused"
  [[ $rc != 124 ]] || fail "$what timed out (120 s) instead of being refused"
  grep -Eiq "$re" "$out" || fail "$what failed (exit $rc) but its output does not match /$re/"
  echo "refused as expected (exit $rc): $(last_line "$out")"
}

# The registry's manifest for REF must be exactly the bytes of DIGEST (read
# with skopeo's ARGS, e.g. --creds).
check_remote_manifest() { # ref expected-digest [skopeo inspect args...]
  local ref=$1 want=$2 out
  shift 2
  out=$(mktemp "$T/work/raw.XXXXXX")
  SK inspect --raw --tls-verify=false "$@" "docker://$REG/$ref" > "$out" \
    || fail "skopeo inspect --raw docker://$REG/$ref failed"
  expect_eq "sha256:$(sha_of "$out")" "$want" "sha256 of the manifest bytes served for $ref"
}
push_layout() { # layout-name repo:tag [skopeo copy args...]: the v1 of $T/layout-NAME, digests preserved
  local name=$1 ref=$2
  shift 2
  SK copy --preserve-digests --dest-tls-verify=false "$@" "oci:$T/layout-$name:v1" "docker://$REG/$ref"
}

# ------------------------------------------------------------- registry ----
# wait_for_line FILE REGEX PID SECONDS: prints the first match of REGEX (grep
# -oE) in FILE once it appears; fails when PID exits or time runs out.
wait_for_line() {
  local file=$1 re=$2 pid=$3 secs=$4 i m
  for ((i = 0; i < secs * 10; i++)); do
    m=$({ grep -oE "$re" "$file" 2>/dev/null || true; } | head -n 1)
    if [[ -n $m ]]; then echo "$m"; return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# For the scripts that run berth with a config file, the server and the CLI
# on one data dir. berth_setup [ENV-ARG...] checks BERTH_BIN and sets DATA,
# CFG (the script writes it, then calls start_berth) and BERTH_ENV, the env(1)
# command every berth process runs under: Berth reads BERTH_* as configuration
# overrides and RUST_LOG as its log level, so the caller's stay out (BERTH_BIN
# among them). ENV-ARGs follow: more -u NAME, then NAME=VALUE for the server
# and the CLI alike.
# shellcheck disable=SC2153  # BERTH_BIN is the script's
berth_setup() {
  local v
  [[ -x $BERTH_BIN ]] || setup_fail "Berth binary not found or not executable: $BERTH_BIN (cargo build -p berth-server, or set BERTH_BIN)"
  DATA=$T/data
  CFG=$T/berth.toml
  mkdir -p "$DATA"
  BERTH_ENV=(env -u RUST_LOG)
  while read -r v; do BERTH_ENV+=(-u "$v"); done < <(compgen -e | grep '^BERTH_' || true)
  BERTH_ENV+=("$@")
}
B() { # the berth CLI on the server's data dir, in the server's environment
  run_tool 60 berth "${BERTH_ENV[@]}" "$BERTH_BIN" "$@" --config "$CFG" --data-dir "$DATA"
}

# start_berth STATUS [WHY [NAME=VALUE...]]: berth serve on a port the kernel
# picks (127.0.0.1:0, so no race for a free one), read back from its log; sets
# BERTH_PID, REG (host:port, for image names) and URL once GET /v2/ answers
# STATUS (WHY: the setting that makes it that one). NAME=VALUE are for the
# server only. A server with [tls] set: E2E_SCHEME=https and E2E_CURL_TLS
# (curl's options to trust its CA, such as --cacert FILE).
start_berth() {
  local want=$1 why=${2:-} code="" i
  set -- "${@:3}"
  echo "$E2E_NAME: starting $BERTH_BIN serve --config $CFG --listen 127.0.0.1:0 --data-dir $DATA"
  "${BERTH_ENV[@]}" "$@" "$BERTH_BIN" serve --config "$CFG" --listen 127.0.0.1:0 --data-dir "$DATA" \
    > "$T/berth.log" 2>&1 < /dev/null &
  BERTH_PID=$!
  REG=$(wait_for_line "$T/berth.log" 'listening on 127\.0\.0\.1:[0-9]+' "$BERTH_PID" 30) || {
    tail -n 40 "$T/berth.log" | sed 's/^/     | /'
    setup_fail "berth did not log 'listening on 127.0.0.1:PORT' within 30 s"
  }
  REG=${REG#listening on }
  URL=${E2E_SCHEME:-http}://$REG
  for ((i = 0; i < 100; i++)); do
    code=$(curl -s ${E2E_CURL_TLS[@]+"${E2E_CURL_TLS[@]}"} -o /dev/null -w '%{http_code}' --max-time 2 "$URL/v2/" || true)
    [[ $code == "$want" ]] && break
    sleep 0.1
  done
  [[ $code == "$want" ]] || setup_fail "GET $URL/v2/ answered ${code:-nothing}, expected $want${why:+ ($why)}"
}

# client_env AUTH-FILE: the clients' environment, set only once the registry
# runs (the registry under test must not see it; e.g. the reference registry
# reads REGISTRY_* variables as its config). The clients' temp files (skopeo's
# and podman's big-file temp dirs) go under $T too, and nothing of the
# machine's containers/image configuration takes part: AUTH-FILE starts empty
# (podman insists that it exists), no search registries, a policy that
# accepts anything for the explicit --signature-policy of pulls. PODMAN is
# podman with its own storage under $T/podman.
client_env() {
  export TMPDIR=$T/tmp
  export REGISTRY_AUTH_FILE=$1
  printf '{"auths":{}}\n' > "$REGISTRY_AUTH_FILE"
  printf 'unqualified-search-registries = []\n' > "$T/registries.conf"
  export CONTAINERS_REGISTRIES_CONF=$T/registries.conf
  printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' > "$T/policy.json"
  PODMAN=(podman --root "$T/podman/root" --runroot "$T/podman/run" --storage-driver vfs
          --cgroup-manager cgroupfs --events-backend file --tmpdir "$T/podman/tmp")
}

# ----------------------------------------------------- OCI image layouts ----
# Build OCI image layouts with plain tools.
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
# shellcheck disable=SC2034  # used by the scripts that source this file
MT_INDEX=application/vnd.oci.image.index.v1+json
MT_CONFIG=application/vnd.oci.image.config.v1+json
MT_LAYER=application/vnd.oci.image.layer.v1.tar+gzip

add_blob() { # layout file -> moves file into the layout, prints its hex digest
  local d
  d=$(sha_of "$2")
  mkdir -p "$1/blobs/sha256"
  mv "$2" "$1/blobs/sha256/$d"
  echo "$d"
}

make_layer() { # layout name -> prints a JSON object {desc, diffid}
  local layout=$1 name=$2 w
  w=$(mktemp -d "$T/work/layer.XXXXXX")
  mkdir -p "$w/root/$name"
  head -c $((2048 + RANDOM % 4096)) /dev/urandom > "$w/root/$name/random.bin"
  echo "berth e2e layer $name" > "$w/root/$name/README"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w/root" -cf "$w/layer.tar" "$name"
  local diffid size digest
  diffid=$(sha_of "$w/layer.tar")
  gzip -n -c "$w/layer.tar" > "$w/layer.tgz"
  size=$(stat -c %s "$w/layer.tgz")
  digest=$(add_blob "$layout" "$w/layer.tgz")
  rm -rf "$w"
  jq -cn --arg mt "$MT_LAYER" --arg d "sha256:$digest" --argjson s "$size" --arg diff "sha256:$diffid" \
    '{desc: {mediaType: $mt, digest: $d, size: $s}, diffid: $diff}'
}

make_image() { # layout arch variant nlayers prefix -> prints the manifest descriptor JSON
  local layout=$1 arch=$2 variant=$3 n=$4 prefix=$5 i layers="[]" l
  for ((i = 1; i <= n; i++)); do
    l=$(make_layer "$layout" "$prefix-layer$i")
    layers=$(jq -c --argjson l "$l" '. + [$l]' <<<"$layers")
  done
  image_of_layers "$layout" "$arch" "$variant" "$prefix" "$layers"
}

# image_of_layers LAYOUT ARCH VARIANT PREFIX LAYERS: the config and manifest
# of an image over LAYERS (a JSON array of make_layer's objects, their blobs
# already in LAYOUT, wherever they came from) -> prints the manifest
# descriptor JSON, as make_image.
image_of_layers() {
  local layout=$1 arch=$2 variant=$3 prefix=$4 layers=$5 cfg cfgd cfgs man mand mans
  cfg=$(mktemp "$T/work/cfg.XXXXXX")
  jq -cjn --arg arch "$arch" --arg variant "$variant" --argjson layers "$layers" --arg p "$prefix" \
    --arg by "berth $E2E_NAME.sh" '
    {created: "2024-01-01T00:00:00Z", architecture: $arch, os: "linux"}
    + (if $variant != "" then {variant: $variant} else {} end)
    + {config: {Env: ["PATH=/"], Labels: {"org.example.e2e": $p}},
       rootfs: {type: "layers", diff_ids: [$layers[].diffid]},
       history: [$layers[] | {created: "2024-01-01T00:00:00Z", created_by: $by}]}' > "$cfg"
  cfgs=$(stat -c %s "$cfg")
  cfgd=$(add_blob "$layout" "$cfg")
  man=$(mktemp "$T/work/man.XXXXXX")
  jq -cjn --arg mt "$MT_MANIFEST" --arg cmt "$MT_CONFIG" --arg cd "sha256:$cfgd" --argjson cs "$cfgs" \
    --argjson layers "$layers" --arg p "$prefix" '
    {schemaVersion: 2, mediaType: $mt,
     config: {mediaType: $cmt, digest: $cd, size: $cs},
     layers: [$layers[].desc],
     annotations: {"org.opencontainers.image.title": $p}}' > "$man"
  mans=$(stat -c %s "$man")
  mand=$(add_blob "$layout" "$man")
  jq -cn --arg mt "$MT_MANIFEST" --arg d "sha256:$mand" --argjson s "$mans" --arg arch "$arch" --arg v "$variant" \
    --arg cd "sha256:$cfgd" '
    {mediaType: $mt, digest: $d, size: $s,
     platform: ({architecture: $arch, os: "linux"} + (if $v != "" then {variant: $v} else {} end)),
     config: $cd}'
}

write_layout_index() { # layout descriptor-json tag
  printf '{"imageLayoutVersion":"1.0.0"}' > "$1/oci-layout"
  jq -cn --argjson d "$2" --arg tag "$3" \
    '{schemaVersion: 2, manifests: [$d + {annotations: {"org.opencontainers.image.ref.name": $tag}}]}' > "$1/index.json"
}

compare_layouts() { # original-layout copied-layout expected-top-digest
  local a=$1 b=$2 f n=0
  expect_eq "$(jq -r '.manifests[0].digest' "$b/index.json")" "$3" "digest in $b/index.json"
  for f in "$a"/blobs/sha256/*; do
    [[ -f $b/blobs/sha256/$(basename "$f") ]] || fail "blob $(basename "$f") missing in the copied-out layout"
    cmp "$f" "$b/blobs/sha256/$(basename "$f")" || fail "blob $(basename "$f") differs after the round trip"
    n=$((n + 1))
  done
  expect_eq "$(find "$b/blobs/sha256" -type f | wc -l)" "$n" "number of blobs in the copied-out layout"
  echo "$n blobs identical"
}

# build_layout NAME NLAYERS PREFIX: $T/layout-NAME, an OCI layout with a fresh
# random linux/amd64 image tagged v1; its digests in the state (layout_state).
build_layout() {
  local L=$T/layout-$1 d
  mkdir -p "$L"
  d=$(make_image "$L" amd64 "" "$2" "$3")
  write_layout_index "$L" "$(jq -c 'del(.platform, .config)' <<<"$d")" v1
  layout_state "$1" "$(jq -r .digest <<<"$d")"
}
layout_state() { # name manifest-digest -> state NAME_manifest, _config, _layers, _blobs (config + layers)
  local m=$T/layout-$1/blobs/sha256/${2#sha256:}
  st_set "$1_manifest" "$2"
  st_set "$1_config" "$(jq -r .config.digest "$m")"
  st_set "$1_layers" "$(jq -r '.layers[].digest' "$m" | tr '\n' ' ')"
  st_set "$1_blobs" "$(jq -r '.config.digest, .layers[].digest' "$m" | tr '\n' ' ')"
}

# build_multi PREFIX: $T/layout-multi, an OCI image index over linux/amd64 and
# linux/arm64/v8 (one layer each) tagged v1; state multi_index and
# multi_{amd64,arm64}_{manifest,config}.
build_multi() {
  local M=$T/layout-multi a b idx idxd idxs
  mkdir -p "$M"
  a=$(make_image "$M" amd64 "" 1 "$1-amd64")
  b=$(make_image "$M" arm64 v8 1 "$1-arm64")
  idx=$(mktemp "$T/work/idx.XXXXXX")
  jq -cjn --arg mt "$MT_INDEX" --argjson a "$a" --argjson b "$b" \
    '{schemaVersion: 2, mediaType: $mt, manifests: [$a, $b | del(.config)]}' > "$idx"
  idxs=$(stat -c %s "$idx")
  idxd=$(add_blob "$M" "$idx")
  write_layout_index "$M" "$(jq -cn --arg mt "$MT_INDEX" --arg d "sha256:$idxd" --argjson s "$idxs" \
    '{mediaType: $mt, digest: $d, size: $s}')" v1
  st_set multi_index "sha256:$idxd"
  st_set multi_amd64_manifest "$(jq -r .digest <<<"$a")"
  st_set multi_amd64_config "$(jq -r .config <<<"$a")"
  st_set multi_arm64_manifest "$(jq -r .digest <<<"$b")"
  st_set multi_arm64_config "$(jq -r .config <<<"$b")"
}

# ================================================================ podman ====
PM() { run_tool 180 podman "${PODMAN[@]}" "$@"; }

# podman_runs: the start of a group's first podman step; skips it where
# podman cannot run on this machine.
podman_runs() {
  mkdir -p "$T/podman/root" "$T/podman/run" "$T/podman/tmp"
  if ! timeout 60 "${PODMAN[@]}" info > "$T/work/podman-info.out" 2>&1; then
    cat "$T/work/podman-info.out"
    skip_here "podman cannot run on this machine: $(last_line "$T/work/podman-info.out")"
  fi
}

# scratch_context TOOL FILE: $T/TOOL-ctx, a build context FROM scratch + COPY
# hello.txt (FILE: Containerfile or Dockerfile); hello.txt differs in every
# run, so the image is new to the registry.
scratch_context() {
  local ctx=$T/$1-ctx
  mkdir -p "$ctx"
  echo "hello from $1, berth $E2E_NAME $$ $RANDOM" > "$ctx/hello.txt"
  printf 'FROM scratch\nCOPY hello.txt /\n' > "$ctx/$2"
}

# podman_build REF: builds scratch_context's image as REF, without network
# (output in $T/work/podman-build.out); skips the step where podman cannot
# build.
podman_build() {
  scratch_context podman Containerfile
  if ! timeout 120 "${PODMAN[@]}" build --network none --pull=never -t "$1" \
        -f "$T/podman-ctx/Containerfile" "$T/podman-ctx" > "$T/work/podman-build.out" 2>&1; then
    cat "$T/work/podman-build.out"
    skip_here "podman build does not work on this machine: $(last_line "$T/work/podman-build.out")"
  fi
}

# =============================================================== docker ====
DK() { run_tool 120 docker "$DOCKER_CLI" "$@"; }

# stop_recorded ID NAME PID SECONDS: SIGTERM a daemon started by the main shell
# (call it there: only the parent can wait for it), wait up to SECONDS and
# record the result as step ID. Returns 1 if it is still running.
stop_recorded() {
  local id=$1 name=$2 pid=$3 secs=$4 t0 i stopped=0 took
  t0=$(date +%s.%N)
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then
      stopped=1; break
    fi
    sleep 0.1
  done
  took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [[ $stopped == 1 ]]; then
    wait "$pid" 2>/dev/null || true
    record PASS "$id" "stop $name (SIGTERM)" "$took"
    return 0
  fi
  record FAIL "$id" "stop $name (SIGTERM): still running after $secs s" "$took"
  return 1
}

# start_dockerd: in the main shell, so that the PID can be waited for. The
# docker client (DK, and DOCKER_CLI run directly) talks to this daemon only,
# with its own config under $T.
start_dockerd() {
  local D=$T/docker
  mkdir -p "$D/data" "$D/exec" "$D/config"
  export DOCKER_HOST=unix://$D/docker.sock DOCKER_BUILDKIT=0 DOCKER_CONFIG=$D/config
  printf '{"deprecated-key-path": "%s/key.json"}\n' "$D" > "$D/daemon.json"
  dockerd --config-file "$D/daemon.json" --storage-driver vfs --bridge=none --iptables=false --ip-masq=false \
    --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/docker.pid" -H "unix://$D/docker.sock" \
    > "$D/dockerd.log" 2>&1 < /dev/null &
  DOCKERD_PID=$!
  echo "$DOCKERD_PID" > "$T/state/dockerd_pid"
}

# wait_ready PID OUT CMD...: CMD (10 s at most each time) until it succeeds,
# output in OUT, for up to 300 tries 0.1 s apart; fails early once PID is
# gone. A daemon started by the main shell stays a zombie until that shell
# reaps it, and a zombie counts as gone.
wait_ready() {
  local pid=$1 out=$2 i
  shift 2
  for ((i = 0; i < 300; i++)); do
    if timeout 10 "$@" > "$out" 2>&1; then return 0; fi
    [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    sleep 0.1
  done
  return 1
}

step_docker_ready() {
  local D=$T/docker pid
  pid=$(st dockerd_pid)
  if wait_ready "$pid" "$T/work/docker-version.out" "$DOCKER_CLI" version; then
    { grep -E 'Version|API' "$T/work/docker-version.out" || true; } | head -n 6
    return 0
  fi
  tail -n 20 "$D/dockerd.log"
  skip_here "dockerd could not start on this machine: $({ grep -iE 'error|fail' "$D/dockerd.log" || tail -n 1 "$D/dockerd.log"; } | tail -n 1)"
}

# =========================================================== containerd ====
# containerd's own CLI `ctr` against a containerd started here, standalone:
# its root, state, temp dir, sockets and config all live under $T/containerd,
# it listens on unix sockets only (no TCP, debug or metrics address) and the
# CRI plugin is off. Images are unpacked with the `native` snapshotter. Call
# containerd_paths after make_temp_dir.
containerd_paths() {
  CTRD=$T/containerd
  CTRD_SOCK=$CTRD/containerd.sock
}
CT() { run_tool 120 ctr ctr --address "$CTRD_SOCK" --namespace e2e "$@"; }

start_containerd() { # in the main shell, so that the PID can be waited for
  mkdir -p "$CTRD/root" "$CTRD/state" "$CTRD/tmp" "$CTRD/opt"
  cat > "$CTRD/config.toml" <<EOF
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
temp = "$CTRD/tmp"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$CTRD_SOCK"
  tcp_address = ""

[ttrpc]
  address = "$CTRD_SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD/opt"
EOF
  containerd --config "$CTRD/config.toml" --root "$CTRD/root" --state "$CTRD/state" --address "$CTRD_SOCK" \
    > "$CTRD/containerd.log" 2>&1 < /dev/null &
  CONTAINERD_PID=$!
  echo "$CONTAINERD_PID" > "$T/state/containerd_pid"
}

step_ctr_ready() {
  local pid
  pid=$(st containerd_pid)
  if wait_ready "$pid" "$T/work/ctr-version.out" ctr --address "$CTRD_SOCK" version; then
    { grep -E 'Version|Revision' "$T/work/ctr-version.out" || true; } | head -n 4
    return 0
  fi
  tail -n 20 "$CTRD/containerd.log"
  skip_here "containerd could not start on this machine: $({ grep -E 'level=(fatal|error)' "$CTRD/containerd.log" || tail -n 1 "$CTRD/containerd.log"; } | tail -n 1)"
}

# ctr_http NAME CTR-ARGS...: run ctr (the caller passes --http-dump) with its
# output in $T/work/ctr-NAME.out; list the requests it made (method, path).
ctr_http() {
  local out=$T/work/ctr-$1.out rc=0
  shift
  CT "$@" > "$out" 2>&1 || rc=$?
  echo "requests made by ctr $1 $2:"
  ctr_requests "$out" | sed 's/^/  /'
  # ctr's own output (progress, errors) without the dumped HTTP exchanges
  { grep -av 'level=info' "$out" || true; } | tail -n 20
  return $rc
}
ctr_requests() { # ctr-output -> "METHOD /v2/..." per request (bodies may precede them on a line)
  { grep -aoE '(HEAD|GET|PUT|POST|PATCH|DELETE) /v2/[^ "]*' "$1" || true; }
}


# =============================================================== summary ====
# finish WORD: the result per client (WORD: client or group), where to look
# when a step failed (berth's exit status if it ended early, the end of its
# log), and the closing line; fails if a step failed, so that, called last,
# it gives the script's exit status. BERTH_PID is empty where the script did
# not start berth (e2e.sh --url).
finish() {
  local c rc ended_early=""
  echo "== results per $1"
  for c in "${CLIENTS[@]}"; do echo "CLIENT $c: ${CLIENT_RESULT[$c]}"; done
  if [[ $FAILED -gt 0 ]]; then
    echo "$E2E_NAME: step logs are in $T/logs (kept only with --keep / E2E_KEEP=1)"
    if [[ -n $BERTH_PID ]] && ! kill -0 "$BERTH_PID" 2>/dev/null; then
      rc=0; wait "$BERTH_PID" || rc=$?
      echo "$E2E_NAME: berth is no longer running (it exited with status $rc during the test)"
      BERTH_PID=""
      ended_early=1
    fi
    if [[ ( -n $BERTH_PID || -n $ended_early ) && -s $T/berth.log ]]; then
      echo "$E2E_NAME: last lines of berth's log:"
      tail -n 40 "$T/berth.log" | cut -c 1-400 | sed 's/^/     | /'
    fi
  fi
  echo "$E2E_LABEL: $PASSED passed, $FAILED failed, $SKIPPED skipped"
  [[ $FAILED -eq 0 ]]
}
