#!/usr/bin/env bash
# End-to-end test of pull-through caching with real clients: the reference
# registry (Debian docker-registry) is the upstream, configured three times
# (as docker.io with Docker Hub's library/ rule, as registry.k8s.io, and under
# a nested prefix), Berth caches it, and
# skopeo, podman, the Docker engine and containerd's ctr pull through every
# addressing form: a configured prefix (nested too, and Docker Hub's library/
# rule), the upstream's host in the path, and containerd's hosts.toml mirror
# (?ns=). Then the upstream stops and the cache still serves; pushes to a
# cache are refused; mirror mode refuses every push.
#
#   scripts/e2e-proxy.sh [-v] [-k]
#
# BERTH_BIN defaults to ${CARGO_TARGET_DIR:-<repo>/target}/debug/berth.
# Everything binds to 127.0.0.1 and lives in one temp dir, removed on exit.
# Last line: E2E-PROXY: N passed, M failed, K skipped.
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/berth}

E2E_NAME=e2e-proxy
E2E_LABEL=E2E-PROXY
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
parse_args "$@"

require_tools --docker-cli "Debian packages: skopeo, podman, docker.io, containerd, docker-registry, jq, curl" \
  curl jq skopeo podman dockerd containerd ctr docker-registry python3 tar gzip sha256sum cmp timeout stat mktemp

make_temp_dir
containerd_paths
stop_on_exit DOCKERD_PID dockerd 20
stop_on_exit CONTAINERD_PID containerd 10
stop_on_exit BERTH_PID berth 10
stop_on_exit UPSTREAM_PID docker-registry 10

MT_DOCKER_MANIFEST=application/vnd.docker.distribution.manifest.v2+json
MT_DOCKER_LIST=application/vnd.docker.distribution.manifest.list.v2+json
ACCEPT="Accept: $MT_MANIFEST, $MT_INDEX, $MT_DOCKER_MANIFEST, $MT_DOCKER_LIST"

# ------------------------------------------------------------- upstream ----
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
UPSTREAM_PORT=$(free_port)
UP=127.0.0.1:$UPSTREAM_PORT
mkdir -p "$T/upstream"
printf 'version: 0.1\nlog: { level: info }\nstorage: { filesystem: { rootdirectory: %s }, delete: { enabled: true } }\nhttp: { addr: %s }\n' \
  "$T/upstream" "$UP" > "$T/upstream.yml"
start_upstream() { # in the main shell: the reference registry on $UP
  env -u AWS_CA_BUNDLE -u REGISTRY_AUTH_FILE docker-registry serve "$T/upstream.yml" >> "$T/upstream.log" 2>&1 < /dev/null &
  UPSTREAM_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$UP/v2/" || true) == 200 ]] && return 0
    sleep 0.1
  done
  setup_fail "the reference registry did not answer on $UP"
}
start_upstream

# ---------------------------------------------------------------- berth ----
berth_setup
write_config() { # [registry mode]
  {
    [[ -n ${1:-} ]] && printf '[registry]\nmode = "%s"\n' "$1"
    cat <<EOF
[proxy]
freshness_secs = 0
[[proxy.upstreams]]
name = "hub"
url = "http://$UP"
host = "docker.io"
[[proxy.upstreams]]
name = "k8s"
url = "http://$UP"
host = "registry.k8s.io"
[[proxy.upstreams]]
name = "acme"
url = "http://$UP"
prefix = "acme/dockerhub-mirror"
EOF
  } > "$CFG"
}
write_config
start_berth 200
client_env "$T/auth.json"

upstream_digest() { # repo reference -> Docker-Content-Digest of the upstream's HEAD
  curl -sSf --max-time 30 -I -H "$ACCEPT" "http://$UP/v2/$1/manifests/$2" \
    | tr -d '\r' | sed -nE 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p'
}
berth_requests() { # the /v2/ paths berth logged (debug level is off: use the upstream's log instead)
  { grep -aoE '"(GET|HEAD) /v2/[^ "]*' "$T/upstream.log" || true; } | tr -d '"'
}

# ================================================================ images ====
begin_client upstream
step_upstream_images() {
  build_layout alpine 2 proxy-alpine
  build_layout sched 1 proxy-sched
  build_multi proxy
  # Docker schema 2, as Docker Hub serves most images: skopeo converts while pushing.
  SK copy --format v2s2 --dest-tls-verify=false "oci:$T/layout-alpine:v1" "docker://$UP/library/alpine:3.20"
  SK copy --preserve-digests --dest-tls-verify=false "oci:$T/layout-sched:v1" "docker://$UP/kube-scheduler:v1.29.1"
  SK copy --all --preserve-digests --dest-tls-verify=false "oci:$T/layout-multi:v1" "docker://$UP/multi:1"
  st_set alpine_digest "$(upstream_digest library/alpine 3.20)"
  st_set sched_digest "$(upstream_digest kube-scheduler v1.29.1)"
  expect_eq "$(upstream_digest multi 1)" "$(st multi_index)" "the index's digest upstream"
  echo "alpine $(st alpine_digest) (Docker schema 2), kube-scheduler $(st sched_digest)"
}
step 0.1 "push library/alpine:3.20 (Docker schema 2), kube-scheduler:v1.29.1 and an index to the reference registry" step_upstream_images

# ================================================================ skopeo ====
begin_client skopeo
step_sk_forms() {
  check_remote_manifest hub/library/alpine:3.20 "$(st alpine_digest)"
  check_remote_manifest hub/alpine:3.20 "$(st alpine_digest)"
  check_remote_manifest acme/dockerhub-mirror/library/alpine:3.20 "$(st alpine_digest)"
  check_remote_manifest docker.io/library/alpine:3.20 "$(st alpine_digest)"
  check_remote_manifest registry.k8s.io/kube-scheduler:v1.29.1 "$(st sched_digest)"
  check_remote_manifest k8s/kube-scheduler:v1.29.1 "$(st sched_digest)"
  echo "prefix, library rule, nested prefix and in-path hosts: the upstream's digests, byte for byte"
}
step 1.1 "inspect through a prefix, the library/ rule, a nested prefix and the in-path host" step_sk_forms
step_sk_copy() {
  SK copy --src-tls-verify=false "docker://$REG/registry.k8s.io/kube-scheduler:v1.29.1" "oci:$T/out-sched:v1"
  compare_layouts "$T/layout-sched" "$T/out-sched" "$(st sched_digest)"
}
step 1.2 "copy kube-scheduler through the cache: every blob identical" step_sk_copy
step_sk_multi() {
  SK copy --all --preserve-digests --src-tls-verify=false "docker://$REG/k8s/multi:1" "oci:$T/out-multi:v1"
  compare_layouts "$T/layout-multi" "$T/out-multi" "$(st multi_index)"
}
step 1.3 "copy --all of a multi-arch index: index and children byte-exact" step_sk_multi

# ================================================================ podman ====
begin_client podman
step_pm_pull() {
  podman_runs
  PM pull --tls-verify=false --signature-policy "$T/policy.json" "$REG/hub/library/alpine:3.20"
  expect_eq "$(PM image inspect --format '{{.Digest}}' "$REG/hub/library/alpine:3.20")" "$(st alpine_digest)" "podman's digest"
  PM pull --tls-verify=false --signature-policy "$T/policy.json" "$REG/registry.k8s.io/kube-scheduler:v1.29.1"
  expect_eq "$(PM image inspect --format '{{.Digest}}' "$REG/registry.k8s.io/kube-scheduler:v1.29.1")" \
    "$(st sched_digest)" "podman's digest"
}
step 2.1 "podman pull through the prefix and the in-path host" step_pm_pull

# ================================================================ docker ====
begin_client docker
start_dockerd
step 3.0 "dockerd starts" step_docker_ready
step_dk_pull() {
  DK pull "$REG/hub/library/alpine:3.20"
  DK image inspect --format '{{json .RepoDigests}}' "$REG/hub/library/alpine:3.20" | grep -qF "$(st alpine_digest)" \
    || fail "docker does not list $(st alpine_digest) among the image's digests"
  DK pull "$REG/registry.k8s.io/kube-scheduler:v1.29.1"
  DK image inspect --format '{{json .RepoDigests}}' "$REG/registry.k8s.io/kube-scheduler:v1.29.1" \
    | grep -qF "$(st sched_digest)" || fail "docker does not list $(st sched_digest)"
}
step 3.1 "docker pull through the prefix and the in-path host" step_dk_pull

# ============================================================ containerd ====
begin_client containerd
start_containerd
step 4.0 "containerd starts" step_ctr_ready
step_ctr_mirror() {
  # A hosts.toml mirror: containerd asks Berth for registry.k8s.io's images
  # with ?ns=registry.k8s.io; the upstream itself is never named.
  mkdir -p "$T/certs.d/registry.k8s.io"
  printf 'server = "https://registry.k8s.io"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$REG" > "$T/certs.d/registry.k8s.io/hosts.toml"
  local out=$T/work/ctr-mirror.out d
  CT images pull --hosts-dir "$T/certs.d" --http-dump --snapshotter native --platform linux/amd64 \
    registry.k8s.io/kube-scheduler:v1.29.1 > "$out" 2>&1 || { tail -n 30 "$out"; fail "ctr pull failed"; }
  ctr_requests "$out" | sed 's/^/  /'
  ctr_requests "$out" | grep -q 'ns=registry.k8s.io' || fail "containerd sent no ?ns=registry.k8s.io"
  d=$(CT images ls | awk '$1 == "registry.k8s.io/kube-scheduler:v1.29.1" { print $3 }')
  expect_eq "$d" "$(st sched_digest)" "the digest ctr lists"
}
step 4.1 "ctr pull with a hosts.toml mirror (?ns=registry.k8s.io)" step_ctr_mirror

# ======================================================== upstream down ====
begin_client cache
stop_pid "$UPSTREAM_PID" docker-registry 10
UPSTREAM_PID=
step_down() {
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$UP/v2/" || true) != 200 ]] || fail "the upstream still answers"
  check_remote_manifest hub/library/alpine:3.20 "$(st alpine_digest)"
  check_remote_manifest registry.k8s.io/kube-scheduler:v1.29.1 "$(st sched_digest)"
  SK copy --src-tls-verify=false "docker://$REG/registry.k8s.io/kube-scheduler:v1.29.1" "oci:$T/out-down:v1"
  compare_layouts "$T/layout-sched" "$T/out-down" "$(st sched_digest)"
  if timeout 60 "${PODMAN[@]}" info > /dev/null 2>&1; then
    PM rmi -f "$REG/hub/library/alpine:3.20" > /dev/null
    PM pull --tls-verify=false --signature-policy "$T/policy.json" "$REG/hub/library/alpine:3.20"
  fi
}
step 5.1 "with the upstream stopped, the cache still serves (skopeo, podman)" step_down
step_push_refused() {
  must_fail "push to a cache" 'denied|upstream hub' \
    skopeo --insecure-policy copy --dest-tls-verify=false "oci:$T/layout-alpine:v1" "docker://$REG/hub/library/alpine:new"
}
step 5.2 "a push to a cached repository is refused (DENIED, naming the upstream)" step_push_refused

# ========================================================== mirror mode ====
begin_client mirror
stop_pid "$BERTH_PID" berth 10
BERTH_PID=
write_config mirror
start_berth 200
step_mirror() {
  must_fail "push in mirror mode" 'denied|pull-only mirror' \
    skopeo --insecure-policy copy --dest-tls-verify=false "oci:$T/layout-alpine:v1" "docker://$REG/team/app:v1"
  check_remote_manifest hub/library/alpine:3.20 "$(st alpine_digest)"
}
step 6.1 "mirror mode: a push to a local name is refused, the cache still serves" step_mirror

finish client
