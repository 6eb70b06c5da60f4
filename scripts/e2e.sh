#!/usr/bin/env bash
# End-to-end test of an OCI registry with real clients: skopeo, podman, docker,
# containerd's ctr (and curl for the final state).
#
#   scripts/e2e.sh --url http://127.0.0.1:PORT   test a registry that already runs
#   scripts/e2e.sh                               start Berth itself and test it
#
# Without --url the script starts "$BERTH_BIN serve --listen 127.0.0.1:0
# --data-dir TMP/data" (BERTH_BIN defaults to
# ${CARGO_TARGET_DIR:-<repo>/target}/debug/berth), reads the port it logs,
# waits for GET /v2/ to answer 200 and stops it by PID on exit.
#
# Options:  -v, --verbose  print the output of every step as it runs
#           -k, --keep     keep the temp dir (logs, layouts, registry data)
# Env:      BERTH_BIN, DOCKER_CLI (default /usr/bin/docker), E2E_KEEP=1 (= --keep)
#
# Needs on the PATH: curl jq skopeo podman dockerd docker containerd ctr tar
# gzip sha256sum cmp timeout (the caller installs them; nothing is installed
# here). Nothing is fetched from any registry: every image is built locally.
# Everything binds to 127.0.0.1 (dockerd and containerd listen on unix sockets
# only) and every file lives under one `mktemp -d` dir, removed on exit.
#
# Output: one line per step (PASS/FAIL/SKIP, with the step's log on FAIL), a
# result per client, and last exactly one line
#   E2E: N passed, M failed, K skipped
# counting steps (a client that cannot start on this machine, e.g. dockerd does
# not start, counts as one skipped step). Exit status 1 if any step failed.
set -euo pipefail
shopt -s inherit_errexit   # errors inside $(...) count too

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/berth}

# Options, tools, the temp dir and its exit trap, the step runner and its
# helpers, OCI layouts, podman, dockerd and the summary: shared with
# scripts/e2e-auth.sh and scripts/e2e-lifecycle.sh.
E2E_NAME=e2e
E2E_LABEL=E2E
E2E_URL_OPTION=1
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
parse_args "$@"

require_tools --docker-cli "Debian packages: skopeo, podman, docker.io, containerd, jq, curl" \
  curl jq skopeo podman dockerd containerd ctr tar gzip sha256sum cmp timeout stat head mktemp

make_temp_dir
containerd_paths
stop_on_exit DOCKERD_PID dockerd 20
stop_on_exit CONTAINERD_PID containerd 10
stop_on_exit BERTH_PID berth 10

# ------------------------------------------------------------- registry ----
if [[ -n $URL ]]; then
  URL=${URL%/}
  case $URL in
    http://*) ;;
    *) setup_fail "--url must be http://HOST:PORT (plain HTTP; got '$URL')" ;;
  esac
  REG=${URL#http://}
  echo "e2e: testing the running registry at $URL"
else
  [[ -x $BERTH_BIN ]] || setup_fail "Berth binary not found or not executable: $BERTH_BIN (build it, or set BERTH_BIN, or use --url)"
  mkdir -p "$T/data"
  echo "e2e: starting $BERTH_BIN serve --listen 127.0.0.1:0 --data-dir $T/data"
  # BERTH_BIN is this script's variable, not a Berth setting: Berth reads
  # BERTH_* variables as configuration overrides, so keep it out of its env.
  # Port 0: the kernel picks a free port and Berth logs which, so no other
  # process can take it between a probe and the bind.
  env -u BERTH_BIN "$BERTH_BIN" serve --listen 127.0.0.1:0 --data-dir "$T/data" >"$T/berth.log" 2>&1 &
  BERTH_PID=$!
  REG=$(wait_for_line "$T/berth.log" 'listening on 127\.0\.0\.1:[0-9]+' "$BERTH_PID" 30) || {
    tail -n 40 "$T/berth.log" | sed 's/^/     | /' >&2
    setup_fail "berth did not log 'listening on 127.0.0.1:PORT' within 30 s"
  }
  REG=${REG#listening on }
  URL=http://$REG
fi

# Wait for GET /v2/ -> 200 (up to 30 s).
ready=0
for ((i = 0; i < 300; i++)); do
  if [[ -n $BERTH_PID ]] && ! kill -0 "$BERTH_PID" 2>/dev/null; then
    echo "e2e: berth exited during start-up; last lines of its log:" >&2
    tail -n 40 "$T/berth.log" | sed 's/^/     | /' >&2
    BERTH_PID=""
    setup_fail "berth did not start"
  fi
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/v2/" || true)
  if [[ $code == 200 ]]; then ready=1; break; fi
  sleep 0.1
done
if [[ $ready != 1 ]]; then
  [[ -n $BERTH_PID ]] && { echo "e2e: last lines of berth's log:" >&2; tail -n 40 "$T/berth.log" | sed 's/^/     | /' >&2; }
  setup_fail "GET $URL/v2/ did not answer 200 within 30 s (last status: ${code:-none})"
fi
echo "e2e: registry ready at $URL (image names use $REG)"

client_env "$T/auth.json"


# =============================================================== skopeo ====
step_build_layouts() {
  local L=$T/layout-single M=$T/layout-multi f
  # single-arch image: config + 2 random gzip tar layers + OCI manifest
  build_layout single 2 single
  # multi-arch: OCI image index over linux/amd64 + linux/arm64/v8
  build_multi multi
  # sanity: every blob file is named by its digest
  for f in "$L"/blobs/sha256/* "$M"/blobs/sha256/*; do
    expect_eq "$(sha_of "$f")" "$(basename "$f")" "blob file $f"
  done
  echo "single: $(st single_manifest) ($(find "$L/blobs/sha256" -type f | wc -l) blobs)"
  echo "multi:  $(st multi_index) ($(find "$M/blobs/sha256" -type f | wc -l) blobs)"
}

step_skopeo_push_single() {
  SK copy --preserve-digests --dest-tls-verify=false "oci:$T/layout-single:v1" "docker://$REG/e2e/single:v1"
  check_remote_manifest e2e/single:v1 "$(st single_manifest)"
  check_remote_manifest "e2e/single@$(st single_manifest)" "$(st single_manifest)"
  expect_eq "$(SK inspect --tls-verify=false --format '{{.Digest}}' "docker://$REG/e2e/single:v1")" \
    "$(st single_manifest)" "digest reported by skopeo inspect"
  pushed e2e/single
}

step_skopeo_second_tag() {
  SK copy --preserve-digests --dest-tls-verify=false "oci:$T/layout-single:v1" "docker://$REG/e2e/single:v2"
  check_remote_manifest e2e/single:v2 "$(st single_manifest)"
  local tags
  tags=$(SK list-tags --tls-verify=false "docker://$REG/e2e/single")
  echo "$tags"
  expect_eq "$(jq -c '.Tags | sort' <<<"$tags")" '["v1","v2"]' "skopeo list-tags e2e/single"
}

step_skopeo_pull_single() {
  SK copy --preserve-digests --src-tls-verify=false "docker://$REG/e2e/single:v1" "oci:$T/out-single:v1"
  compare_layouts "$T/layout-single" "$T/out-single" "$(st single_manifest)"
}

step_skopeo_push_multi() {
  SK copy --all --preserve-digests --dest-tls-verify=false "oci:$T/layout-multi:v1" "docker://$REG/e2e/multi:v1"
  check_remote_manifest e2e/multi:v1 "$(st multi_index)"
  check_remote_manifest "e2e/multi@$(st multi_amd64_manifest)" "$(st multi_amd64_manifest)"
  check_remote_manifest "e2e/multi@$(st multi_arm64_manifest)" "$(st multi_arm64_manifest)"
  pushed e2e/multi
  # platform selection through the index: the config of the chosen image
  SK --override-os linux --override-arch arm64 --override-variant v8 inspect --tls-verify=false --config --raw \
    "docker://$REG/e2e/multi:v1" > "$T/work/multi-arm64.config"
  expect_eq "sha256:$(sha_of "$T/work/multi-arm64.config")" "$(st multi_arm64_config)" \
    "config digest of e2e/multi:v1 for linux/arm64/v8"
  SK --override-os linux --override-arch amd64 inspect --tls-verify=false --config --raw \
    "docker://$REG/e2e/multi:v1" > "$T/work/multi-amd64.config"
  expect_eq "sha256:$(sha_of "$T/work/multi-amd64.config")" "$(st multi_amd64_config)" \
    "config digest of e2e/multi:v1 for linux/amd64"
}

step_skopeo_pull_multi() {
  SK copy --all --preserve-digests --src-tls-verify=false "docker://$REG/e2e/multi:v1" "oci:$T/out-multi:v1"
  compare_layouts "$T/layout-multi" "$T/out-multi" "$(st multi_index)"
}

step_skopeo_cross_repo() {
  # registry -> registry in the same registry: skopeo tries a cross-repo
  # mount (POST /v2/e2e/other/blobs/uploads/?mount=DIGEST&from=e2e/single)
  # for blobs its blob-info cache knows to be in e2e/single.
  SK --debug copy --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
    "docker://$REG/e2e/single:v1" "docker://$REG/e2e/other:v1" > "$T/work/cross.log" 2>&1 \
    || { tail -n 40 "$T/work/cross.log"; fail "skopeo copy docker://$REG/e2e/single:v1 docker://$REG/e2e/other:v1 failed"; }
  grep -E 'mount|Mount' "$T/work/cross.log" || true
  check_remote_manifest e2e/other:v1 "$(st single_manifest)"
  local d code
  for d in $(st single_layers) $(st single_config); do
    code=$(http_code HEAD "$URL/v2/e2e/other/blobs/$d")
    expect_eq "$code" 200 "HEAD /v2/e2e/other/blobs/$d after the copy"
  done
  local tried ok
  tried=$(grep -c 'Trying to mount' "$T/work/cross.log" || true)
  ok=$(grep -c 'mount OK' "$T/work/cross.log" || true)
  if [[ $tried == 0 ]]; then
    note "skopeo did not try a cross-repo mount (its blob-info cache knew no location); blobs were copied"
  elif [[ $ok == "$tried" ]]; then
    note "skopeo mounted $ok blobs from e2e/single (cross-repo mount, 201)"
  else
    fail "skopeo tried $tried cross-repo mounts (POST ...?mount=&from=e2e/single) but only $ok answered 201 Created"
  fi
}

step_skopeo_delete() {
  SK delete --tls-verify=false "docker://$REG/e2e/other:v1"
  if SK inspect --raw --tls-verify=false "docker://$REG/e2e/other:v1" > "$T/work/deleted.out" 2>&1; then
    fail "skopeo inspect docker://$REG/e2e/other:v1 still succeeds after skopeo delete"
  fi
  echo "inspect after delete failed as expected: $(tail -n 1 "$T/work/deleted.out")"
  local code
  code=$(http_code GET "$URL/v2/e2e/other/manifests/$(st single_manifest)" -H "Accept: $MT_MANIFEST")
  expect_eq "$code" 404 "GET /v2/e2e/other/manifests/<digest> after delete"
  code=$(http_code GET "$URL/v2/e2e/other/manifests/v1" -H "Accept: $MT_MANIFEST")
  expect_eq "$code" 404 "GET /v2/e2e/other/manifests/v1 after delete"
  # the same manifest in the source repository is untouched
  check_remote_manifest e2e/single:v1 "$(st single_manifest)"
  local d
  for d in $(st single_layers) $(st single_config); do
    expect_eq "$(http_code HEAD "$URL/v2/e2e/single/blobs/$d")" 200 "HEAD /v2/e2e/single/blobs/$d after deleting e2e/other:v1"
  done
}

begin_client skopeo
step 1.1 "build OCI layouts (single-arch: 2 layers; multi-arch index: amd64+arm64)" step_build_layouts
step 1.2 "push single-arch image to e2e/single:v1, manifest digest preserved" step_skopeo_push_single
step 1.3 "push second tag e2e/single:v2, list-tags shows v1 v2" step_skopeo_second_tag
step 1.4 "copy e2e/single:v1 back to an OCI layout, blobs byte-identical" step_skopeo_pull_single
group
step 1.5 "push multi-arch index (--all) to e2e/multi:v1, all digests preserved" step_skopeo_push_multi
step 1.6 "copy e2e/multi:v1 back (--all), blobs byte-identical" step_skopeo_pull_multi
group
step 1.7 "copy e2e/single:v1 -> e2e/other:v1 inside the registry (cross-repo mount)" step_skopeo_cross_repo
step 1.8 "delete e2e/other:v1, manifest gone, e2e/single untouched" step_skopeo_delete

# =============================================================== podman ====
step_podman_start() {
  podman_runs
  PM images
}

step_podman_pull() {
  PM pull --tls-verify=false --signature-policy "$T/policy.json" "$REG/e2e/single:v1"
  expect_eq "sha256:$(PM image inspect --format '{{.Id}}' "$REG/e2e/single:v1")" "$(st single_config)" \
    "podman image id of $REG/e2e/single:v1 (= config digest)"
  expect_eq "$(PM image inspect --format '{{.Digest}}' "$REG/e2e/single:v1")" "$(st single_manifest)" \
    "podman manifest digest of $REG/e2e/single:v1"
}

step_podman_push() {
  PM tag "$REG/e2e/single:v1" "$REG/e2e/podman-copy:v1"
  PM push --tls-verify=false --digestfile "$T/work/podman-push.digest" "$REG/e2e/podman-copy:v1"
  local d
  d=$(cat "$T/work/podman-push.digest")
  echo "podman pushed $d"
  check_remote_manifest e2e/podman-copy:v1 "$d"
  st_set podman_copy_manifest "$d"
  pushed e2e/podman-copy
}

step_podman_roundtrip() {
  PM rmi "$REG/e2e/single:v1" "$REG/e2e/podman-copy:v1"
  [[ -z $(PM images -q) ]] || fail "podman storage not empty after rmi: $(PM images)"
  PM pull --tls-verify=false --signature-policy "$T/policy.json" "$REG/e2e/podman-copy:v1"
  expect_eq "sha256:$(PM image inspect --format '{{.Id}}' "$REG/e2e/podman-copy:v1")" "$(st single_config)" \
    "podman image id of $REG/e2e/podman-copy:v1 after the round trip"
  PM rmi "$REG/e2e/podman-copy:v1"
  [[ -z $(PM images -q) ]] || fail "podman storage not empty after rmi: $(PM images)"
}

step_podman_build() {
  podman_build "$REG/e2e/podman-built:v1"
  cat "$T/work/podman-build.out"
  PM image inspect --format '{{.Id}}' "$REG/e2e/podman-built:v1" > "$T/state/podman_built_id"
}

step_podman_build_push_pull() {
  local id
  id=$(st podman_built_id)
  PM push --tls-verify=false --digestfile "$T/work/podman-built.digest" "$REG/e2e/podman-built:v1"
  check_remote_manifest e2e/podman-built:v1 "$(cat "$T/work/podman-built.digest")"
  pushed e2e/podman-built
  PM rmi "$REG/e2e/podman-built:v1"
  PM pull --tls-verify=false --signature-policy "$T/policy.json" "$REG/e2e/podman-built:v1"
  expect_eq "$(PM image inspect --format '{{.Id}}' "$REG/e2e/podman-built:v1")" "$id" \
    "podman image id of $REG/e2e/podman-built:v1 after push/rmi/pull"
  # the file is in the pulled image: copy it out with skopeo and look into the layer
  SK copy --src-tls-verify=false "docker://$REG/e2e/podman-built:v1" "oci:$T/out-podman-built:v1"
  local found=0 m l
  m=$(jq -r '.manifests[0].digest | ltrimstr("sha256:")' "$T/out-podman-built/index.json")
  for l in $(jq -r '.layers[].digest | ltrimstr("sha256:")' "$T/out-podman-built/blobs/sha256/$m"); do
    if tar -xOf "$T/out-podman-built/blobs/sha256/$l" hello.txt 2>/dev/null | cmp -s - "$T/podman-ctx/hello.txt"; then found=1; fi
  done
  [[ $found == 1 ]] || fail "hello.txt not found in the layers of $REG/e2e/podman-built:v1"
  PM rmi "$REG/e2e/podman-built:v1"
}

begin_client podman
step 2.1 "podman starts with its own storage (vfs, --root/--runroot)" step_podman_start
if [[ $GROUP_BROKEN == 0 ]]; then
  step 2.2 "pull e2e/single:v1 (pushed by skopeo), image id = config digest" step_podman_pull
  step 2.3 "tag + push to e2e/podman-copy:v1" step_podman_push
  step 2.4 "rmi, pull e2e/podman-copy:v1 back, same image id, rmi" step_podman_roundtrip
  group
  step 2.5 "build FROM scratch + COPY (no network)" step_podman_build
  step 2.6 "push e2e/podman-built:v1, rmi, pull, same id, file present" step_podman_build_push_pull
fi

# =============================================================== docker ====
step_docker_build() {
  scratch_context docker Dockerfile
  DK build -t "$REG/team/app:main" "$T/docker-ctx"
  DK image inspect --format '{{.Id}}' "$REG/team/app:main" > "$T/state/docker_app_id"
  echo "built $(st docker_app_id)"
}

step_docker_push() {
  DK push "$REG/team/app:main" | tee "$T/work/docker-push.out"
  local d
  d=$({ grep -oE 'digest: sha256:[0-9a-f]{64}' "$T/work/docker-push.out" || true; } | tail -n 1 | cut -d' ' -f2)
  [[ -n $d ]] || fail "no digest in the output of docker push"
  st_set docker_app_manifest "$d"
  # the registry serves exactly the manifest docker pushed (Docker schema 2)
  curl -sSf --max-time 30 -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -o "$T/work/docker-app.manifest" "$URL/v2/team/app/manifests/main"
  expect_eq "sha256:$(sha_of "$T/work/docker-app.manifest")" "$d" "sha256 of GET /v2/team/app/manifests/main"
  expect_eq "$(jq -r .config.digest "$T/work/docker-app.manifest")" "$(st docker_app_id)" "config digest in the pushed manifest"
  pushed team/app
}

step_docker_roundtrip() {
  DK rmi "$REG/team/app:main"
  if DK image inspect "$REG/team/app:main" >/dev/null 2>&1; then fail "image still present after docker rmi"; fi
  DK pull "$REG/team/app:main"
  expect_eq "$(DK image inspect --format '{{.Id}}' "$REG/team/app:main")" "$(st docker_app_id)" \
    "docker image id after push/rmi/pull"
  expect_eq "$(DK image inspect --format '{{join .RepoDigests " "}}' "$REG/team/app:main")" \
    "$REG/team/app@$(st docker_app_manifest)" "docker RepoDigests after pull"
}

step_docker_pull_skopeo_image() {
  DK pull "$REG/e2e/single:v1"
  expect_eq "$(DK image inspect --format '{{.Id}}' "$REG/e2e/single:v1")" "$(st single_config)" \
    "docker image id of $REG/e2e/single:v1 (= config digest of the OCI image pushed by skopeo)"
  expect_eq "$(DK image inspect --format '{{join .RepoDigests " "}}' "$REG/e2e/single:v1")" \
    "$REG/e2e/single@$(st single_manifest)" "docker RepoDigests of $REG/e2e/single:v1"
}

step_docker_push_mount() {
  # docker knows the layers came from e2e/single on this registry: pushing
  # them to another repository makes it use a cross-repo mount.
  DK tag "$REG/e2e/single:v1" "$REG/e2e/docker-copy:v1"
  DK push "$REG/e2e/docker-copy:v1" | tee "$T/work/docker-copy.out"
  local d
  d=$({ grep -oE 'digest: sha256:[0-9a-f]{64}' "$T/work/docker-copy.out" || true; } | tail -n 1 | cut -d' ' -f2)
  [[ -n $d ]] || fail "no digest in the output of docker push"
  check_remote_manifest e2e/docker-copy:v1 "$d"
  pushed e2e/docker-copy
  local mounted
  mounted=$(grep -c 'Mounted from' "$T/work/docker-copy.out" || true)
  # both layers came from e2e/single (the config is always uploaded)
  expect_eq "$mounted" "$(st single_layers | wc -w)" "layers docker reports as 'Mounted from e2e/single'"
  note "docker mounted $mounted layers from e2e/single (cross-repo mount)"
  DK rmi "$REG/e2e/docker-copy:v1" "$REG/e2e/single:v1" >/dev/null
}

step_docker_pull_multi() {
  DK pull "$REG/e2e/multi:v1"
  expect_eq "$(DK image inspect --format '{{.Id}}' "$REG/e2e/multi:v1")" "$(st multi_amd64_config)" \
    "docker image id of the multi-arch $REG/e2e/multi:v1 (= amd64 config digest)"
  DK rmi "$REG/e2e/multi:v1" >/dev/null
}

begin_client docker
start_dockerd
step 3.1 "dockerd starts (own data root, vfs, no bridge/iptables)" step_docker_ready
if [[ $GROUP_BROKEN == 0 ]]; then
  step 3.2 "build FROM scratch + COPY as $REG/team/app:main" step_docker_build
  step 3.3 "push team/app:main, registry serves the pushed manifest" step_docker_push
  step 3.4 "rmi + pull team/app:main, same image id" step_docker_roundtrip
  group
  step 3.5 "pull e2e/single:v1 (OCI, pushed by skopeo), image id = config digest" step_docker_pull_skopeo_image
  step 3.6 "push it to e2e/docker-copy:v1 (cross-repo mount)" step_docker_push_mount
  group
  step 3.7 "pull multi-arch e2e/multi:v1, gets the amd64 image" step_docker_pull_multi
  group
  # stopped here in the main shell (it is the parent and can wait for it)
  if stop_recorded 3.8 dockerd "$DOCKERD_PID" 20; then DOCKERD_PID=""; fi
fi
stop_pid "$DOCKERD_PID" dockerd 20   # if it did not start (3.1 skipped) or did not stop
DOCKERD_PID=""
unset DOCKER_HOST DOCKER_BUILDKIT DOCKER_CONFIG

# ================================================================= curl ====
catalog_all() { # follows Link: <...>; rel="next" pagination
  local next="/v2/_catalog" page=0 hdr body link
  hdr=$(mktemp "$T/work/hdr.XXXXXX"); body=$(mktemp "$T/work/body.XXXXXX")
  while [[ -n $next && $page -lt 100 ]]; do
    curl -sSf --max-time 30 -D "$hdr" -o "$body" "$URL$next" || fail "GET $next failed"
    jq -r '.repositories[]?' "$body"
    link=$(sed -nE 's/^[Ll]ink:.*<([^>]*)>.*rel="?next"?.*/\1/p' "$hdr" | tr -d '\r')
    next=${link#"$URL"}
    page=$((page + 1))
  done
}

step_curl_catalog() {
  local repos r want=()
  [[ -s $T/state/pushed_repos ]] || fail "no push succeeded above, nothing to look for"
  mapfile -t want < <(sort -u "$T/state/pushed_repos")
  repos=$(catalog_all)
  echo "$repos"
  for r in "${want[@]}"; do
    grep -qxF "$r" <<<"$repos" || fail "GET /v2/_catalog does not list $r"
  done
  echo "catalog lists: ${want[*]}"
}

step_curl_tags() {
  local body
  body=$(curl -sSf --max-time 30 "$URL/v2/e2e/single/tags/list")
  echo "$body"
  expect_eq "$(jq -r .name <<<"$body")" e2e/single "name in tags/list"
  expect_eq "$(jq -c '.tags | sort' <<<"$body")" '["v1","v2"]' "tags in /v2/e2e/single/tags/list"
  body=$(curl -sSf --max-time 30 "$URL/v2/e2e/multi/tags/list")
  expect_eq "$(jq -c '.tags | sort' <<<"$body")" '["v1"]' "tags in /v2/e2e/multi/tags/list"
}

step_curl_manifest_head() {
  local hdr
  hdr=$(curl -sSf --max-time 30 -I -H "Accept: $MT_MANIFEST, $MT_INDEX" "$URL/v2/e2e/single/manifests/v1" | tr -d '\r')
  echo "$hdr"
  expect_eq "$(sed -nE 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p' <<<"$hdr")" "$(st single_manifest)" \
    "Docker-Content-Digest of HEAD /v2/e2e/single/manifests/v1"
  expect_eq "$(sed -nE 's/^[Cc]ontent-[Tt]ype: *//p' <<<"$hdr")" "$MT_MANIFEST" "Content-Type of HEAD /v2/e2e/single/manifests/v1"
  hdr=$(curl -sSf --max-time 30 -I -H "Accept: $MT_MANIFEST, $MT_INDEX" "$URL/v2/e2e/multi/manifests/v1" | tr -d '\r')
  expect_eq "$(sed -nE 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p' <<<"$hdr")" "$(st multi_index)" \
    "Docker-Content-Digest of HEAD /v2/e2e/multi/manifests/v1"
  expect_eq "$(sed -nE 's/^[Cc]ontent-[Tt]ype: *//p' <<<"$hdr")" "$MT_INDEX" "Content-Type of HEAD /v2/e2e/multi/manifests/v1"
}

begin_client curl
step 4.1 "GET /v2/_catalog lists every repository pushed above" step_curl_catalog
group
step 4.2 "GET tags/list for e2e/single (v1 v2) and e2e/multi (v1)" step_curl_tags
group
step 4.3 "HEAD manifests: Docker-Content-Digest and Content-Type" step_curl_manifest_head

# =========================================================== containerd ====
# containerd's own CLI `ctr` against a containerd started here (see
# start_containerd in lib/e2e-common.sh). It runs after the curl group, so it
# checks its own pushes (tags/list, catalog, manifest digests) with curl.
MT_DOCKER_MANIFEST=application/vnd.docker.distribution.manifest.v2+json
MT_DOCKER_LIST=application/vnd.docker.distribution.manifest.list.v2+json

ctr_image_digest() { # ref -> the target digest `ctr images ls` shows for it
  local d
  d=$(CT images ls | awk -v r="$1" '$1 == r { print $3 }')
  [[ -n $d ]] || fail "ctr images ls does not list $1"
  echo "$d"
}

registry_digest() { # repo reference -> Docker-Content-Digest of HEAD /v2/REPO/manifests/REF
  curl -sSf --max-time 30 -I \
    -H "Accept: $MT_MANIFEST, $MT_INDEX, $MT_DOCKER_MANIFEST, $MT_DOCKER_LIST" "$URL/v2/$1/manifests/$2" \
    | tr -d '\r' | sed -nE 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p'
}

# The registry serves REPO:TAG with digest DIGEST (HEAD and the GET bytes) and
# lists TAG in tags/list and REPO in the catalog.
check_served() { # repo tag digest
  local body
  expect_eq "$(registry_digest "$1" "$2")" "$3" "Docker-Content-Digest of HEAD /v2/$1/manifests/$2"
  curl -sSf --max-time 30 -H "Accept: $MT_MANIFEST, $MT_INDEX" -o "$T/work/served.manifest" "$URL/v2/$1/manifests/$2"
  expect_eq "sha256:$(sha_of "$T/work/served.manifest")" "$3" "sha256 of GET /v2/$1/manifests/$2"
  body=$(curl -sSf --max-time 30 "$URL/v2/$1/tags/list")
  echo "tags/list: $body"
  jq -e --arg t "$2" '.tags | index($t)' <<<"$body" >/dev/null || fail "GET /v2/$1/tags/list does not list $2: $body"
  catalog_all | grep -qxF "$1" || fail "GET /v2/_catalog does not list $1"
}

ctr_content_has() { grep -qxF "$1" "$T/work/ctr-content.ls"; }

step_ctr_pull_single() {
  local ref=$REG/e2e/single:v1 d f
  ctr_http pull-single images pull --plain-http --http-dump --snapshotter native --platform linux/amd64 "$ref"
  d=$(ctr_image_digest "$ref")
  echo "ctr lists $ref as $d"
  expect_eq "$d" "$(registry_digest e2e/single v1)" "digest ctr lists for $ref vs Docker-Content-Digest of HEAD"
  expect_eq "$d" "$(st single_manifest)" "digest ctr lists for $ref vs the manifest skopeo pushed"
  # containerd verified every digest (and the diff_ids while unpacking); the
  # bytes in its content store are the ones skopeo pushed
  for f in "$T"/layout-single/blobs/sha256/*; do
    CT content get "sha256:$(basename "$f")" > "$T/work/ctr-blob"
    cmp "$T/work/ctr-blob" "$f" || fail "blob $(basename "$f") in containerd's content store differs from the pushed one"
  done
}

step_ctr_push_copy() {
  local ref=$REG/e2e/containerd-copy:v1 out=$T/work/ctr-push-copy.out tried uploads d
  CT images tag "$REG/e2e/single:v1" "$ref"
  ctr_http push-copy images push --plain-http --http-dump "$ref"
  check_served e2e/containerd-copy v1 "$(st single_manifest)"
  for d in $(st single_layers) $(st single_config); do
    expect_eq "$(http_code HEAD "$URL/v2/e2e/containerd-copy/blobs/$d")" 200 "HEAD /v2/e2e/containerd-copy/blobs/$d"
  done
  # containerd labels pulled content with its source repository and pushes
  # it with POST ...?mount=DIGEST&from=e2e/single; 201 = mounted, else upload
  tried=$(ctr_requests "$out" | grep -c '^POST /v2/e2e/containerd-copy/blobs/uploads/?mount=' || true)
  uploads=$(ctr_requests "$out" | grep -cE '^(PUT|PATCH) /v2/e2e/containerd-copy/blobs/uploads/' || true)
  if [[ $tried == 0 ]]; then
    note "containerd did not try a cross-repo mount; it uploaded the blobs ($uploads PUT/PATCH requests)"
  elif [[ $uploads == 0 ]]; then
    note "containerd mounted $tried blobs from e2e/single (cross-repo mount, 201), uploaded none"
  else
    fail "containerd tried $tried cross-repo mounts from e2e/single but still uploaded ($uploads PUT/PATCH requests): not every mount was answered 201"
  fi
}

step_ctr_pull_multi_amd64() {
  local ref=$REG/e2e/multi:v1 d k
  ctr_http pull-multi-amd64 images pull --plain-http --http-dump --snapshotter native --platform linux/amd64 "$ref"
  d=$(ctr_image_digest "$ref")
  echo "ctr lists $ref as $d"
  expect_eq "$d" "$(registry_digest e2e/multi v1)" "digest ctr lists for $ref vs Docker-Content-Digest of HEAD"
  expect_eq "$d" "$(st multi_index)" "digest ctr lists for $ref vs the index skopeo pushed"
  CT content ls -q > "$T/work/ctr-content.ls"
  for k in multi_index multi_amd64_manifest multi_amd64_config; do
    ctr_content_has "$(st "$k")" || fail "$k $(st "$k") is not in containerd's content store after the pull"
  done
  if ctr_content_has "$(st multi_arm64_manifest)"; then
    fail "containerd fetched the linux/arm64/v8 manifest although the pull asked for --platform linux/amd64"
  fi
}

step_ctr_pull_multi_all() {
  local ref=$REG/e2e/multi:v1 f n=0
  ctr_http pull-multi-all images pull --plain-http --http-dump --snapshotter native --all-platforms "$ref"
  expect_eq "$(ctr_image_digest "$ref")" "$(st multi_index)" "digest ctr lists for $ref after --all-platforms"
  CT content ls -q > "$T/work/ctr-content.ls"
  for f in "$T"/layout-multi/blobs/sha256/*; do
    ctr_content_has "sha256:$(basename "$f")" || fail "blob $(basename "$f") of e2e/multi is not in containerd's content store"
    n=$((n + 1))
  done
  echo "all $n blobs of e2e/multi (both platforms) are in containerd's content store"
}

step_ctr_push_index() {
  local ref=$REG/e2e/containerd-copy:multi hdr k
  CT images tag "$REG/e2e/multi:v1" "$ref"
  ctr_http push-index images push --plain-http --http-dump "$ref"
  check_served e2e/containerd-copy multi "$(st multi_index)"
  hdr=$(curl -sSf --max-time 30 -I -H "Accept: $MT_MANIFEST, $MT_INDEX" "$URL/v2/e2e/containerd-copy/manifests/multi" | tr -d '\r')
  expect_eq "$(sed -nE 's/^[Cc]ontent-[Tt]ype: *//p' <<<"$hdr")" "$MT_INDEX" "Content-Type of HEAD /v2/e2e/containerd-copy/manifests/multi"
  for k in multi_amd64_manifest multi_arm64_manifest; do
    expect_eq "$(registry_digest e2e/containerd-copy "$(st "$k")")" "$(st "$k")" "HEAD /v2/e2e/containerd-copy/manifests/$(st "$k")"
  done
}

step_ctr_import_push() {
  # an image the registry has never seen, built here and imported from an OCI
  # archive (no source label): containerd has to upload its blobs
  local L=$T/layout-ctrd ref=$REG/e2e/containerd-new:v1 desc man f out=$T/work/ctr-push-new.out
  mkdir -p "$L"
  desc=$(make_image "$L" amd64 "" 1 containerd-new)
  man=$(jq -r .digest <<<"$desc")
  write_layout_index "$L" "$(jq -c 'del(.platform, .config)' <<<"$desc")" "$ref"
  tar -C "$L" -cf "$T/work/ctrd-new.tar" oci-layout index.json blobs
  CT images import --all-platforms --no-unpack "$T/work/ctrd-new.tar"
  expect_eq "$(ctr_image_digest "$ref")" "$man" "digest ctr lists for the imported $ref"
  ctr_http push-new images push --plain-http --http-dump "$ref"
  check_served e2e/containerd-new v1 "$man"
  for f in "$L"/blobs/sha256/*; do
    [[ sha256:$(basename "$f") != "$man" ]] || continue
    # -L: a registry may redirect blob downloads to its store.
    curl -sSfL --max-time 30 -o "$T/work/served.blob" "$URL/v2/e2e/containerd-new/blobs/sha256:$(basename "$f")"
    cmp "$T/work/served.blob" "$f" || fail "GET /v2/e2e/containerd-new/blobs/sha256:$(basename "$f") differs from the blob ctr pushed"
  done
  note "containerd uploaded the blobs with $(ctr_requests "$out" | grep -c '^POST /v2/e2e/containerd-new/blobs/uploads/' || true) POST," \
    "$(ctr_requests "$out" | grep -c '^PATCH /v2/e2e/containerd-new/blobs/uploads/' || true) PATCH," \
    "$(ctr_requests "$out" | grep -c '^PUT /v2/e2e/containerd-new/blobs/uploads/' || true) PUT ?digest="
}

begin_client containerd
start_containerd
step 5.1 "containerd starts (own root/state/socket, unix sockets only, no CRI)" step_ctr_ready
if [[ $GROUP_BROKEN == 0 ]]; then
  step 5.2 "ctr pull e2e/single:v1 (pushed by skopeo), digest = HEAD digest, blobs identical" step_ctr_pull_single
  step 5.3 "ctr tag + push to e2e/containerd-copy:v1 (cross-repo mount), tags/list + digest" step_ctr_push_copy
  group
  step 5.4 "ctr pull multi-arch e2e/multi:v1 --platform linux/amd64, only amd64 fetched" step_ctr_pull_multi_amd64
  step 5.5 "ctr pull e2e/multi:v1 --all-platforms, every blob fetched" step_ctr_pull_multi_all
  step 5.6 "ctr push the index to e2e/containerd-copy:multi, digests preserved" step_ctr_push_index
  group
  step 5.7 "ctr import a new image and push it to e2e/containerd-new:v1 (blob uploads)" step_ctr_import_push
  group
  if stop_recorded 5.8 containerd "$CONTAINERD_PID" 10; then CONTAINERD_PID=""; fi
fi
stop_pid "$CONTAINERD_PID" containerd 10   # if it did not start (5.1 skipped) or did not stop
CONTAINERD_PID=""

# ============================================================== summary ====
finish client
