#!/usr/bin/env bash
# End-to-end test of Berth's container image with the Docker engine:
# deploy/image/Dockerfile.scratch built from a statically linked release
# binary (the runtime stage of the Dockerfile, which cannot be built here
# because no base image can be pulled), run, pushed to and pulled from.
#
#   scripts/e2e-image.sh [-v] [-k]
#
# Steps: build the static binary (cargo, a no-op when target/ has it), check
# that both Dockerfiles' runtime stages agree, build the image, check its size
# (< 30 MB), user (non-root), volume and HEALTHCHECK; run it with a read-only
# root file system, no capabilities and a named volume; wait until Docker
# reports it healthy; push and pull with skopeo and docker through it; check
# that it runs as uid 65532 and wrote its data as that user; stop it with
# SIGTERM (exit 0).
#
# Options:  -v, --verbose  print the output of every step as it runs
#           -k, --keep     keep the temp dir
# Env:      BERTH_STATIC_BIN  a static berth binary to use instead of building
#                             ${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/berth
#           DOCKER_CLI (default /usr/bin/docker), E2E_KEEP=1 (= --keep)
#
# Needs skopeo, jq, curl, objcopy, readelf and cargo (the caller installs
# them: scripts/install-deps.sh). When the Docker engine (dockerd and docker)
# is not installed or cannot start here, its steps are skipped with the
# reason (scripts/test fails a run with such a skip unless
# BERTH_TEST_ALLOW_SKIPS=1). The container shares the host's network
# (dockerd runs without a bridge) and listens on 127.0.0.1 only. Everything
# lives under one temp dir, removed on exit.
#
# Output: a line per step and last exactly one line
#   E2E-IMAGE: N passed, M failed, K skipped
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
TRIPLE=x86_64-unknown-linux-gnu
STATIC_BIN=${BERTH_STATIC_BIN:-$TARGET_DIR/$TRIPLE/release/berth}
IMAGE_MAX_BYTES=$((30 * 1000 * 1000))   # 30 MB
BERTH_UID=65532

E2E_NAME=e2e-image
E2E_LABEL=E2E-IMAGE
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
parse_args "$@"
require_tools "Debian packages: skopeo, jq, curl, binutils (scripts/install-deps.sh)" \
  skopeo jq curl objcopy readelf cargo python3 sha256sum timeout
# Without the Docker engine the docker steps are skipped, with the reason.
DOCKER_CLI=${DOCKER_CLI:-/usr/bin/docker}
[[ -x $DOCKER_CLI ]] || DOCKER_CLI=$(command -v docker || true)
NO_ENGINE=""
if ! command -v dockerd >/dev/null 2>&1; then NO_ENGINE="dockerd is not installed (apt-get install docker.io)"
elif [[ -z $DOCKER_CLI ]]; then NO_ENGINE="the docker client is not installed (apt-get install docker.io)"
fi
make_temp_dir
stop_on_exit DOCKERD_PID dockerd 20
client_env "$T/auth.json"
# The registry under test is the container; BERTH_PID stays empty.
BERTH_PID=""

# ------------------------------------------------------------------ steps ----
step_static_binary() {
  if [[ -n ${BERTH_STATIC_BIN:-} ]]; then
    echo "using BERTH_STATIC_BIN=$STATIC_BIN"
  else
    # The same flags as the Dockerfile's builder stage; a no-op when fresh.
    (cd "$REPO_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' \
      cargo build --release --locked -p berth-server --target "$TRIPLE")
  fi
  [[ -x $STATIC_BIN ]] || fail "$STATIC_BIN missing"
  if readelf -l "$STATIC_BIN" | grep 'program interpreter' >/dev/null; then
    fail "$STATIC_BIN is dynamically linked: a scratch image has no libraries"
  fi
  if readelf -d "$STATIC_BIN" 2>/dev/null | grep NEEDED; then fail "$STATIC_BIN needs shared libraries"; fi
  "$STATIC_BIN" --version
  echo "static: no program interpreter, no NEEDED libraries; $(stat -c %s "$STATIC_BIN") bytes unstripped"
}

# The Dockerfile's runtime stage and Dockerfile.scratch differ only in where
# the files come from (a builder stage, or the build context).
runtime_stage() { # dockerfile: its lines from the runtime stage on, sources normalised
  sed -n '/^FROM scratch AS runtime/,$p' "$1" |
    sed -E 's#^(COPY( --chown=[0-9:]+)?) (--from=build )?(/image/)?#\1 #'
}
step_runtime_stages_agree() {
  runtime_stage "$REPO_ROOT/Dockerfile" > "$T/work/runtime.dockerfile"
  runtime_stage "$REPO_ROOT/deploy/image/Dockerfile.scratch" > "$T/work/runtime.scratch"
  [[ -s $T/work/runtime.dockerfile ]] || fail "no 'FROM scratch AS runtime' stage in Dockerfile"
  diff -u "$T/work/runtime.dockerfile" "$T/work/runtime.scratch" ||
    fail "the runtime stages of Dockerfile and deploy/image/Dockerfile.scratch differ"
  echo "runtime stages agree ($(wc -l < "$T/work/runtime.scratch") lines)"
}

step_build_image() {
  "$REPO_ROOT/deploy/image/build-context.sh" "$STATIC_BIN" "$T/image-ctx"
  DK build --no-cache -t berth:e2e -f "$REPO_ROOT/deploy/image/Dockerfile.scratch" "$T/image-ctx"
  DK image inspect berth:e2e > "$T/work/image.json"
  jq '.[0] | {Id, Size, User: .Config.User, Volumes: .Config.Volumes, Healthcheck: .Config.Healthcheck,
    Entrypoint: .Config.Entrypoint, Cmd: .Config.Cmd}' "$T/work/image.json"
}

step_image_facts() {
  local size user
  size=$(jq -r '.[0].Size' "$T/work/image.json")
  ((size < IMAGE_MAX_BYTES)) || fail "image is $size bytes, over $IMAGE_MAX_BYTES"
  user=$(jq -r '.[0].Config.User' "$T/work/image.json")
  [[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || fail "image runs as '$user', expected a non-root user"
  expect_eq "$user" "$BERTH_UID:$BERTH_UID" "image user"
  expect_eq "$(jq -r '.[0].Config.Volumes | keys | join(" ")' "$T/work/image.json")" /var/lib/berth "image volumes"
  expect_eq "$(jq -c '.[0].Config.Healthcheck.Test' "$T/work/image.json")" \
    '["CMD","/usr/local/bin/berth","healthcheck"]' "HEALTHCHECK"
  note "image size $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }') MB), user $user"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

step_run_container() {
  local port
  port=$(free_port)
  # The hardening a Kubernetes pod of the chart has: read-only root, no
  # capabilities, no privilege gain; /tmp a tmpfs; data in a named volume,
  # which Docker fills from the image (owned by the image's user).
  # --health-interval only makes the image's own check run often.
  DK run -d --name berth-e2e --network host \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v berth-e2e-data:/var/lib/berth --add-host berth-e2e.test:127.0.0.1 \
    -e BERTH_LISTEN="127.0.0.1:$port" \
    --health-interval 1s --health-start-period 30s \
    berth:e2e > "$T/work/container.id"
  st_set reg "127.0.0.1:$port"
  local i code=""
  for ((i = 0; i < 150; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/v2/" || true)
    [[ $code == 200 ]] && break
    [[ $("$DOCKER_CLI" inspect -f '{{.State.Running}}' berth-e2e) == true ]] || break
    sleep 0.2
  done
  if [[ $code != 200 ]]; then
    "$DOCKER_CLI" logs berth-e2e 2>&1 | tail -n 30
    fail "GET http://127.0.0.1:$port/v2/ answered ${code:-nothing}"
  fi
  "$DOCKER_CLI" logs berth-e2e 2>&1 | head -n 5
  echo "registry in the container at 127.0.0.1:$port"
}

step_healthy() {
  local i status=""
  for ((i = 0; i < 60; i++)); do
    status=$("$DOCKER_CLI" inspect -f '{{.State.Health.Status}}' berth-e2e)
    [[ $status == healthy ]] && break
    sleep 0.5
  done
  "$DOCKER_CLI" inspect -f '{{json .State.Health}}' berth-e2e | jq '{Status, FailingStreak, Log: [.Log[-1]]}'
  expect_eq "$status" healthy "docker's health status of the container"
  # The static binary resolves names (glibc's NSS without shared modules):
  # from /etc/hosts, where Docker writes --add-host.
  local port
  port=$(st reg); port=${port##*:}
  "$DOCKER_CLI" exec berth-e2e /usr/local/bin/berth healthcheck "http://berth-e2e.test:$port/healthz"
  echo "berth healthcheck http://berth-e2e.test:$port/healthz: ok (name resolved in the container)"
  # The probe fails where nothing answers 200.
  must_fail "berth healthcheck of a port nothing listens on" 'cannot connect|refused' \
    "$DOCKER_CLI" exec berth-e2e /usr/local/bin/berth healthcheck --timeout 2 http://127.0.0.1:1/healthz
}

step_runs_as_non_root() {
  local pid uid
  pid=$("$DOCKER_CLI" inspect -f '{{.State.Pid}}' berth-e2e)
  uid=$(awk '/^Uid:/ { print $2 "," $3 "," $4 "," $5 }' "/proc/$pid/status")
  expect_eq "$uid" "$BERTH_UID,$BERTH_UID,$BERTH_UID,$BERTH_UID" "real, effective, saved and fs uid of berth in the container"
  expect_eq "$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")" 0000000000000000 "effective capabilities"
  echo "berth (host pid $pid) runs as uid $BERTH_UID with no capabilities"
}

step_skopeo_push_pull() {
  REG=$(st reg)
  build_layout img 2 image
  push_layout img e2e/image:v1
  check_remote_manifest e2e/image:v1 "$(st img_manifest)"
  SK copy --src-tls-verify=false "docker://$REG/e2e/image:v1" "oci:$T/layout-back:v1"
  compare_layouts "$T/layout-img" "$T/layout-back" "$(st img_manifest)"
}

step_docker_push_pull() {
  REG=$(st reg)
  scratch_context docker Dockerfile
  DK build -t "$REG/team/app:main" "$T/docker-ctx"
  local id
  id=$("$DOCKER_CLI" image inspect --format '{{.Id}}' "$REG/team/app:main")
  DK push "$REG/team/app:main"
  DK rmi "$REG/team/app:main"
  DK pull "$REG/team/app:main"
  expect_eq "$("$DOCKER_CLI" image inspect --format '{{.Id}}' "$REG/team/app:main")" "$id" "image id after push, rmi, pull"
}

step_data_owned_by_berth() {
  local dir owners
  dir=$("$DOCKER_CLI" volume inspect -f '{{.Mountpoint}}' berth-e2e-data)
  ls -ln "$dir"
  owners=$(find "$dir" -printf '%U:%G\n' | sort -u | tr '\n' ' ')
  expect_eq "$owners" "$BERTH_UID:$BERTH_UID " "owners of every file in the data volume"
  [[ -n $(find "$dir" -path '*blobs*' -type f -print -quit) ]] || fail "no blob files in the data volume"
}

step_stop() {
  local t0 code
  t0=$SECONDS
  DK stop -t 20 berth-e2e
  code=$("$DOCKER_CLI" inspect -f '{{.State.ExitCode}}' berth-e2e)
  expect_eq "$code" 0 "exit code of berth after docker stop (SIGTERM)"
  echo "stopped in $((SECONDS - t0)) s, exit code 0"
}

# ------------------------------------------------------------------- run ----
begin_client image
step 1.1 "static release binary (crt-static, $TRIPLE)" step_static_binary
step 1.2 "Dockerfile and deploy/image/Dockerfile.scratch have the same runtime stage" step_runtime_stages_agree
group
begin_client docker
if [[ -n $NO_ENGINE ]]; then
  record SKIP 2.1 "the Docker engine is not available: $NO_ENGINE"
  finish client
  exit
fi
start_dockerd
step 2.1 "dockerd starts (own data root, vfs, no bridge/iptables)" step_docker_ready
if [[ $GROUP_BROKEN == 0 && ${CLIENT_RESULT[image]} == PASS ]]; then
  step 2.2 "docker build -f deploy/image/Dockerfile.scratch (FROM scratch, static binary)" step_build_image
  step 2.3 "image under 30 MB, user $BERTH_UID, volume /var/lib/berth, HEALTHCHECK berth healthcheck" step_image_facts
  step 2.4 "docker run: read-only root, no capabilities, named volume; GET /v2/ answers 200" step_run_container
  step 2.5 "HEALTHCHECK reports healthy; a host name resolves; the probe fails on a dead port" step_healthy
  step 2.6 "berth runs as uid $BERTH_UID with no capabilities" step_runs_as_non_root
  step 2.7 "skopeo push and pull through the container, digests and blobs identical" step_skopeo_push_pull
  step 2.8 "docker push, rmi and pull through the container, same image id" step_docker_push_pull
  step 2.9 "every file in the data volume belongs to uid $BERTH_UID" step_data_owned_by_berth
  step 2.10 "docker stop: berth exits 0 on SIGTERM" step_stop
  group
  if stop_recorded 2.11 dockerd "$DOCKERD_PID" 20; then DOCKERD_PID=""; fi
elif [[ $GROUP_BROKEN == 0 ]]; then
  echo "---- 2.2-2.10 docker: not run (the static binary could not be built or checked)"
fi
stop_pid "$DOCKERD_PID" dockerd 20
DOCKERD_PID=""
finish client
