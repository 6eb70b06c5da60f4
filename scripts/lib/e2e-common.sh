# shellcheck shell=bash
# Shared by scripts/e2e.sh and scripts/e2e-auth.sh: the step runner and its
# PASS/FAIL/SKIP counters, helpers for steps, stopping processes, a free port,
# OCI image layouts built with plain tools, and a private dockerd.
#
# Source it from the main shell after setting:
#   E2E_NAME   prefix of messages ("e2e")     E2E_LABEL  of the closing line ("E2E")
#   T          the temp dir (with logs/ state/ work/ in it)
#   VERBOSE    1 = show every step's output   DOCKER_CLI the docker client
# It defines functions and the counters, and traps INT and TERM.

E2E_NAME=${E2E_NAME:-e2e}
E2E_LABEL=${E2E_LABEL:-E2E}

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

# ------------------------------------------------------------- registry ----
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "$E2E_NAME: no free port found" >&2
  return 1
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
  local cfg cfgd cfgs man mand mans
  cfg=$(mktemp "$T/work/cfg.XXXXXX")
  jq -cjn --arg arch "$arch" --arg variant "$variant" --argjson layers "$layers" --arg p "$prefix" '
    {created: "2024-01-01T00:00:00Z", architecture: $arch, os: "linux"}
    + (if $variant != "" then {variant: $variant} else {} end)
    + {config: {Env: ["PATH=/"], Labels: {"org.example.e2e": $p}},
       rootfs: {type: "layers", diff_ids: [$layers[].diffid]},
       history: [$layers[] | {created: "2024-01-01T00:00:00Z", created_by: "berth e2e.sh"}]}' > "$cfg"
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

start_dockerd() { # in the main shell, so that the PID can be waited for
  local D=$T/docker
  mkdir -p "$D/data" "$D/exec" "$D/config"
  printf '{"deprecated-key-path": "%s/key.json"}\n' "$D" > "$D/daemon.json"
  dockerd --config-file "$D/daemon.json" --storage-driver vfs --bridge=none --iptables=false --ip-masq=false \
    --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/docker.pid" -H "unix://$D/docker.sock" \
    > "$D/dockerd.log" 2>&1 < /dev/null &
  DOCKERD_PID=$!
  echo "$DOCKERD_PID" > "$T/state/dockerd_pid"
}

step_docker_ready() {
  local D=$T/docker i pid
  pid=$(st dockerd_pid)
  for ((i = 0; i < 300; i++)); do
    if timeout 10 "$DOCKER_CLI" version > "$T/work/docker-version.out" 2>&1; then
      { grep -E 'Version|API' "$T/work/docker-version.out" || true; } | head -n 6
      return 0
    fi
    # a zombie (exited, not yet reaped by the main shell) counts as gone
    [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || break
    sleep 0.1
  done
  tail -n 20 "$D/dockerd.log"
  skip_here "dockerd could not start on this machine: $({ grep -iE 'error|fail' "$D/dockerd.log" || tail -n 1 "$D/dockerd.log"; } | tail -n 1)"
}

