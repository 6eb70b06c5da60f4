#!/usr/bin/env bash
# End-to-end test of Berth's token authentication with real clients: skopeo,
# podman and Docker 20.10 (plus curl for the exact HTTP answers).
#
#   scripts/e2e-auth.sh [-v] [-k]
#
# Starts, all on 127.0.0.1 with free ports and every file under one
# `mktemp -d` dir (removed on exit):
#   - tests/external-auth/service.py, a token validation service following the
#     external validation contract, with one token: ext-token-bob -> bob (id
#     1001, bob@example.com, group dev);
#   - "$BERTH_BIN serve --config CFG --listen 127.0.0.1:0 --data-dir DATA" with
#     [auth] mode = "token", anonymous = ["public/**"], [auth.external] pointing
#     at the service, and a login limit raised to 1000 failures a minute (this
#     script fails logins on purpose, more than the default 10 a minute);
#   - a private dockerd (vfs, no bridge/iptables, unix socket) for the Docker steps.
# Users, grants and robot tokens are made with the berth CLI on the same data
# dir while the server runs. Images are built locally; nothing is pulled from
# any registry.
#
# What it proves, one step each (PASS/FAIL/SKIP):
#   1 local user alice (push on team/**): skopeo login, push, pull back with
#     identical digests; denied on other/app; anonymous pull of team/app refused
#   2 robot token (team/*:push): push with any login name; refused once revoked
#   3 external validation: bob pushes to dev/** through group:dev, is denied on
#     team/app, cannot mount team/app's blobs; a wrong login name is refused
#   4 anonymous pull of public/** (pushed by an admin); anonymous push refused
#   5 podman login/push/pull/denied push/logout as alice
#   6 docker login/push/pull/denied push/logout as alice; login with a robot token
#   7 `berth user disable alice`: her next login fails (curl, skopeo, podman,
#     docker), and so does her refresh token
#   8 the server's log contains none of the passwords or tokens used
#
# Options:  -v, --verbose  print the output of every step as it runs
#           -k, --keep     keep the temp dir (logs, configs, registry data)
# Env:      BERTH_BIN (default ${CARGO_TARGET_DIR:-<repo>/target}/debug/berth),
#           DOCKER_CLI (default /usr/bin/docker), E2E_KEEP=1 (= --keep)
#
# Needs on the PATH: curl jq python3 skopeo podman dockerd tar gzip sha256sum
# cmp timeout base64 (installed by scripts/install-deps.sh).
#
# Output: one line per step (PASS/FAIL/SKIP, with the step's log on FAIL), a
# result per group, and last exactly one line
#   E2E-AUTH: N passed, M failed, K skipped
# (a client that cannot run here, e.g. dockerd does not start, counts as one
# skipped step). Exit status 1 if any step failed.
set -euo pipefail
shopt -s inherit_errexit   # errors inside $(...) count too

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/berth}
EXT_SERVICE=$REPO_ROOT/tests/external-auth/service.py

# Options, tools, the temp dir and its exit trap, starting berth, the step
# runner and its helpers, OCI layouts, podman, dockerd and the summary: shared
# with scripts/e2e.sh and scripts/e2e-lifecycle.sh.
E2E_NAME=e2e-auth
E2E_LABEL=E2E-AUTH
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
parse_args "$@"

require_tools --docker-cli "scripts/install-deps.sh" \
  curl jq python3 skopeo podman dockerd tar gzip sha256sum cmp timeout base64 stat head mktemp

make_temp_dir
mkdir -p "$T/auth" "$T/home"
stop_on_exit DOCKERD_PID dockerd 20
stop_on_exit BERTH_PID berth 10
stop_on_exit EXT_PID external-auth 5

# ------------------------------------------------------ secrets and users ----
# Random per run; every secret goes into $T/state/secrets ("label<TAB>value")
# for the final check of the server's log.
rand() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
secret() { printf '%s\t%s\n' "$1" "$2" >> "$T/state/secrets"; }
ALICE_PW="alice-pw-$(rand)"
ADMIN_PW="admin-pw-$(rand)"
BOB_TOKEN=ext-token-bob
secret "alice's password" "$ALICE_PW"
secret "the admin's password" "$ADMIN_PW"
secret "bob's external token" "$BOB_TOKEN"
secret "alice's Basic credentials" "$(printf 'alice:%s' "$ALICE_PW" | base64 -w0)"
secret "bob's Basic credentials" "$(printf 'bob:%s' "$BOB_TOKEN" | base64 -w0)"

# --------------------------------------------------- external validation ----
printf '%s\n' "$(jq -n --arg t "$BOB_TOKEN" \
  '{($t): {id: "1001", username: "bob", email: "bob@example.com", groups: ["dev"]}}')" > "$T/tokens.json"
[[ -f $EXT_SERVICE ]] || setup_fail "$EXT_SERVICE not found"
python3 -u "$EXT_SERVICE" --port 0 "$T/tokens.json" > "$T/external-auth.log" 2>&1 < /dev/null &
EXT_PID=$!
EXT_URL=$(wait_for_line "$T/external-auth.log" 'http://127\.0\.0\.1:[0-9]+' "$EXT_PID" 30) || {
  tail -n 20 "$T/external-auth.log" | sed 's/^/     | /'
  setup_fail "the external validation service did not start (no 'listening on' line within 30 s)"
}
echo "e2e-auth: external validation service at $EXT_URL"

# ---------------------------------------------------------------- berth ----
# VALIDATION_SERVICE_URL is configuration too: the caller's stays out.
berth_setup -u VALIDATION_SERVICE_URL
cat > "$CFG" <<EOF
[auth]
mode = "token"
anonymous = ["public/**"]

[auth.login_limit]
failures = 1000
window_secs = 60

[auth.external]
url = "$EXT_URL"
EOF
# Debug level, so that the check of the server's log for credentials (step
# 8.1) covers every line it may write.
start_berth 401 "auth.mode = token" RUST_LOG=debug
echo "e2e-auth: registry ready at $URL (token auth; image names use $REG)"

# Client environment: nothing of the machine's own client configuration or
# stored credentials (HOME, auth files, registries.conf) may take part.
export HOME=$T/home
unset XDG_CONFIG_HOME XDG_RUNTIME_DIR DOCKER_CONFIG DOCKER_HOST
client_env "$T/auth/default.json"   # stays empty: the default identity is anonymous

# --------------------------------------------------------- step helpers ----
DENIED_RE='denied|unauthori[sz]ed|forbidden'

# token_req CREDS SCOPE... : GET /v2/token (CREDS login:password, or "" for
# anonymous); prints "STATUS<TAB>BODY".
token_req() {
  local creds=$1 args=() s body
  shift
  for s in "$@"; do args+=(--data-urlencode "scope=$s"); done
  [[ -z $creds ]] || args+=(-u "$creds")
  body=$(mktemp "$T/work/token.XXXXXX")
  printf '%s\t%s\n' "$(curl -sS --max-time 30 -G -o "$body" -w '%{http_code}' \
    --data-urlencode service=berth "${args[@]}" "$URL/v2/token")" "$(cat "$body")"
}
# token_post FIELD=VALUE...: POST /v2/token with a form; prints "STATUS<TAB>BODY".
token_post() {
  local args=() f body
  for f in service=berth client_id=berth-e2e-auth "$@"; do args+=(--data-urlencode "$f"); done
  body=$(mktemp "$T/work/token.XXXXXX")
  printf '%s\t%s\n' "$(curl -sS --max-time 30 -o "$body" -w '%{http_code}' "${args[@]}" "$URL/v2/token")" "$(cat "$body")"
}
# token_of CREDS SCOPE...: the token (the request must answer 200)
token_of() {
  local r t
  r=$(token_req "$@")
  [[ ${r%%$'\t'*} == 200 ]] || fail "GET /v2/token as '${1%%:*}' answered ${r%%$'\t'*}: ${r#*$'\t'}"
  t=$(jq -r .token <<<"${r#*$'\t'}")
  [[ -n $t && $t != null ]] || fail "no token in the answer: ${r#*$'\t'}"
  secret "a token issued by /v2/token" "$t"
  echo "$t"
}
# v2 METHOD PATH TOKEN [curl args...]: prints "STATUS ERRORCODE" (- when none)
v2() {
  local m=$1 p=$2 tok=$3 body code auth=()
  shift 3
  body=$(mktemp "$T/work/v2.XXXXXX")
  [[ -z $tok ]] || auth=(-H "Authorization: Bearer $tok")
  if [[ $m == HEAD ]]; then set -- -I "$@"; else set -- -X "$m" "$@"; fi
  code=$(curl -sS --max-time 30 -o "$body" -w '%{http_code}' "${auth[@]}" "$@" "$URL$p")
  echo "$code $({ jq -r '.errors[0].code // "-"' "$body" 2>/dev/null || echo -; } | head -n 1)"
}
expect_v2() { # expected-"STATUS CODE" METHOD PATH TOKEN [curl args...]
  local want=$1 got
  shift
  got=$(v2 "$@")
  echo "$1 $2 -> $got"
  expect_eq "$got" "$want" "$1 $2"
}

# ============================================================ local user ====
step_layouts() {
  local n
  for n in app robot dev pub; do build_layout "$n" 2 "auth-$n"; echo "$n: $(st "${n}_manifest")"; done
}

step_alice_create() {
  echo "$ALICE_PW" | B user add alice
  B grant add user:alice 'team/**' push
  B user list
  expect_v2 "401 UNAUTHORIZED" GET /v2/ ""
  local hdr
  hdr=$(curl -sS --max-time 30 -o /dev/null -D - "$URL/v2/" | tr -d '\r')
  grep -i '^www-authenticate:' <<<"$hdr"
  grep -qiF "www-authenticate: Bearer realm=\"$URL/v2/token\",service=\"berth\"" <<<"$hdr" \
    || fail "GET /v2/ without a token: no 'Bearer realm=\"$URL/v2/token\",service=\"berth\"' challenge"
}

step_alice_login() {
  local af=$T/auth/alice.json
  printf '{"auths":{}}\n' > "$af"
  echo "$ALICE_PW" | SK login --tls-verify=false --authfile "$af" -u alice --password-stdin "$REG"
  jq -e --arg r "$REG" '.auths[$r].auth' "$af" >/dev/null || fail "skopeo login stored nothing for $REG in $af"
  must_fail "skopeo login as alice with a wrong password" "$DENIED_RE|invalid username" \
    skopeo login --tls-verify=false --authfile "$T/auth/alice-wrong.json" -u alice -p "not-$ALICE_PW" "$REG"
}

step_alice_push() {
  push_layout app team/app:1 --dest-creds "alice:$ALICE_PW"
  check_remote_manifest team/app:1 "$(st app_manifest)" --creds "alice:$ALICE_PW"
  # the credentials skopeo login stored work as well
  SK list-tags --tls-verify=false --authfile "$T/auth/alice.json" "docker://$REG/team/app" | tee "$T/work/tags.json"
  expect_eq "$(jq -c .Tags "$T/work/tags.json")" '["1"]' "skopeo list-tags team/app (with the login's authfile)"
}

step_alice_pull() {
  SK copy --preserve-digests --src-tls-verify=false --src-creds "alice:$ALICE_PW" \
    "docker://$REG/team/app:1" "oci:$T/out-app:1"
  compare_layouts "$T/layout-app" "$T/out-app" "$(st app_manifest)"
}

step_alice_denied() {
  must_fail "alice's push to other/app" "$DENIED_RE" \
    skopeo --insecure-policy copy --dest-tls-verify=false --dest-creds "alice:$ALICE_PW" \
    "oci:$T/layout-app:v1" "docker://$REG/other/app:1"
  # the HTTP exchange: a token is issued, without push on other/app
  local tok
  tok=$(token_of "alice:$ALICE_PW" repository:other/app:pull,push)
  expect_v2 "401 DENIED" POST /v2/other/app/blobs/uploads/ "$tok"
}

step_anon_team_refused() {
  must_fail "anonymous pull of team/app:1" "$DENIED_RE|authentication required" \
    skopeo --insecure-policy copy --src-tls-verify=false --src-no-creds "docker://$REG/team/app:1" "oci:$T/out-anon:1"
  local tok
  tok=$(token_of "" repository:team/app:pull)
  expect_v2 "401 DENIED" GET "/v2/team/app/manifests/1" "$tok" -H "Accept: $MT_MANIFEST"
  expect_v2 "401 UNAUTHORIZED" GET "/v2/team/app/manifests/1" "" -H "Accept: $MT_MANIFEST"
}

# ================================================================ robot ====
step_robot_push() {
  local tok
  tok=$(B token create --name ci --grant 'team/*:push' --expires 1d)
  [[ $tok == berth_rt_* ]] || fail "berth token create printed '$tok', not a berth_rt_ token"
  secret "the robot token ci" "$tok"
  st_set robot_token "$tok"
  push_layout robot team/robot:1 --dest-creds "anything:$tok"
  check_remote_manifest team/robot:1 "$(st robot_manifest)" --creds "someone-else:$tok"
  # team/* is one path component: team/deep/robot is not covered
  must_fail "the robot's push to team/deep/robot" "$DENIED_RE" \
    skopeo --insecure-policy copy --dest-tls-verify=false --dest-creds "anything:$tok" \
    "oci:$T/layout-robot:v1" "docker://$REG/team/deep/robot:1"
}

step_robot_revoked() {
  local tok
  tok=$(st robot_token)
  B token revoke ci
  must_fail "a push with the revoked robot token" "$DENIED_RE|invalid username" \
    skopeo --insecure-policy copy --dest-tls-verify=false --dest-creds "anything:$tok" \
    "oci:$T/layout-robot:v1" "docker://$REG/team/robot:2"
  local r
  r=$(token_req "anything:$tok" repository:team/robot:pull,push)
  echo "GET /v2/token with the revoked token -> ${r%%$'\t'*} ${r#*$'\t'}"
  expect_eq "${r%%$'\t'*} $(jq -r '.errors[0].code' <<<"${r#*$'\t'}")" "401 UNAUTHORIZED" "GET /v2/token with the revoked robot token"
}

# ============================================================= external ====
step_bob_push() {
  B grant add group:dev 'dev/**' push
  echo "$BOB_TOKEN" | SK login --tls-verify=false --authfile "$T/auth/bob.json" -u bob --password-stdin "$REG"
  push_layout dev dev/app:1 --dest-creds "bob:$BOB_TOKEN"
  check_remote_manifest dev/app:1 "$(st dev_manifest)" --creds "bob:$BOB_TOKEN"
  # the id and the email are accepted as the login name too
  token_of "1001:$BOB_TOKEN" repository:dev/app:pull >/dev/null
  token_of "bob@example.com:$BOB_TOKEN" repository:dev/app:pull >/dev/null
  note "the validation service answered $(curl -sS --max-time 10 "$EXT_URL/stats" | jq -r .requests) requests so far"
}

step_bob_denied() {
  must_fail "bob's push to team/app" "$DENIED_RE" \
    skopeo --insecure-policy copy --dest-tls-verify=false --dest-creds "bob:$BOB_TOKEN" \
    "oci:$T/layout-dev:v1" "docker://$REG/team/app:bob"
  must_fail "bob's pull of team/app:1" "$DENIED_RE" \
    skopeo --insecure-policy inspect --raw --tls-verify=false --creds "bob:$BOB_TOKEN" "docker://$REG/team/app:1"
  # a cross-repo mount from a repository bob may not pull is not done: the
  # registry opens an ordinary upload (202) instead of mounting (201)
  local tok layer loc hdr
  layer=$(st app_layers | cut -d' ' -f1)
  tok=$(token_of "bob:$BOB_TOKEN" repository:dev/app:pull,push repository:team/app:pull)
  hdr=$(curl -sS --max-time 30 -o /dev/null -D - -X POST -H "Authorization: Bearer $tok" \
    "$URL/v2/dev/app/blobs/uploads/?mount=$layer&from=team/app" | tr -d '\r')
  echo "POST /v2/dev/app/blobs/uploads/?mount=$layer&from=team/app ->"; echo "$hdr"
  expect_eq "$(head -n 1 <<<"$hdr" | cut -d' ' -f2)" 202 "status of bob's mount from team/app"
  loc=$(sed -nE 's/^[Ll]ocation: *//p' <<<"$hdr")
  [[ $loc == http* ]] || loc=$URL$loc
  curl -sS --max-time 30 -o /dev/null -X DELETE -H "Authorization: Bearer $tok" "$loc" || true
  expect_v2 "404 -" HEAD "/v2/dev/app/blobs/$layer" "$tok"
}

step_bob_wrong_login() {
  must_fail "skopeo login as mallory with bob's token" "$DENIED_RE|invalid username" \
    skopeo login --tls-verify=false --authfile "$T/auth/mallory.json" -u mallory -p "$BOB_TOKEN" "$REG"
  local r
  r=$(token_req "mallory:$BOB_TOKEN" repository:dev/app:pull)
  echo "GET /v2/token as mallory with bob's token -> ${r%%$'\t'*} ${r#*$'\t'}"
  expect_eq "${r%%$'\t'*} $(jq -r '.errors[0].code' <<<"${r#*$'\t'}")" "401 UNAUTHORIZED" "GET /v2/token as mallory with bob's token"
}

# ============================================================ anonymous ====
step_admin_push_public() {
  echo "$ADMIN_PW" | B user add admin --admin
  push_layout pub public/base:1 --dest-creds "admin:$ADMIN_PW"
  check_remote_manifest public/base:1 "$(st pub_manifest)" --creds "admin:$ADMIN_PW"
}

step_anon_pull_public() {
  SK copy --preserve-digests --src-tls-verify=false --src-no-creds "docker://$REG/public/base:1" "oci:$T/out-pub:1"
  compare_layouts "$T/layout-pub" "$T/out-pub" "$(st pub_manifest)"
  check_remote_manifest public/base:1 "$(st pub_manifest)" --no-creds
  local tok
  tok=$(token_of "" repository:public/base:pull)
  expect_v2 "200 -" GET /v2/public/base/manifests/1 "$tok" -H "Accept: $MT_MANIFEST"
}

step_anon_push_refused() {
  must_fail "an anonymous push to public/base" "$DENIED_RE|authentication required" \
    skopeo --insecure-policy copy --dest-tls-verify=false --dest-no-creds \
    "oci:$T/layout-pub:v1" "docker://$REG/public/base:anon"
  local tok
  tok=$(token_of "" repository:public/base:pull,push)
  expect_v2 "401 DENIED" POST /v2/public/base/blobs/uploads/ "$tok"
}

step_catalog_filtered() {
  # alice's catalog: what she may pull (team/**, and public/** for everyone)
  local tok list
  tok=$(token_of "alice:$ALICE_PW" registry:catalog:*)
  list=$(curl -sSf --max-time 30 -H "Authorization: Bearer $tok" "$URL/v2/_catalog" | jq -c '.repositories | sort')
  echo "alice's catalog: $list"
  expect_eq "$list" '["public/base","team/app","team/robot"]' "GET /v2/_catalog as alice"
  tok=$(token_of "admin:$ADMIN_PW" registry:catalog:*)
  list=$(curl -sSf --max-time 30 -H "Authorization: Bearer $tok" "$URL/v2/_catalog" | jq -c '.repositories | sort')
  echo "the admin's catalog: $list"
  expect_eq "$list" '["dev/app","public/base","team/app","team/robot"]' "GET /v2/_catalog as the admin"
}

# =============================================================== podman ====
PODMAN_AUTH=$T/auth/podman.json

step_podman_start() {
  podman_runs
  podman_build "$REG/team/podman:1"
  PM image inspect --format '{{.Id}}' "$REG/team/podman:1" > "$T/state/podman_id"
  touch "$T/state/podman_up"
}

step_podman_login() {
  printf '{"auths":{}}\n' > "$PODMAN_AUTH"
  echo "$ALICE_PW" | PM login --tls-verify=false --authfile "$PODMAN_AUTH" -u alice --password-stdin "$REG"
  jq -e --arg r "$REG" '.auths[$r].auth' "$PODMAN_AUTH" >/dev/null || fail "podman login stored nothing for $REG"
}

step_podman_push_pull() {
  local id d
  id=$(st podman_id)
  PM push --tls-verify=false --authfile "$PODMAN_AUTH" --digestfile "$T/work/podman.digest" "$REG/team/podman:1"
  d=$(cat "$T/work/podman.digest")
  echo "podman pushed $d"
  check_remote_manifest team/podman:1 "$d" --creds "alice:$ALICE_PW"
  PM rmi "$REG/team/podman:1"
  PM pull --tls-verify=false --authfile "$PODMAN_AUTH" --signature-policy "$T/policy.json" "$REG/team/podman:1"
  expect_eq "$(PM image inspect --format '{{.Id}}' "$REG/team/podman:1")" "$id" "podman image id after push/rmi/pull"
  expect_eq "$(PM image inspect --format '{{.Digest}}' "$REG/team/podman:1")" "$d" "podman manifest digest after the pull"
}

step_podman_denied() {
  PM tag "$REG/team/podman:1" "$REG/other/podman:1"
  must_fail "podman push to other/podman as alice" "$DENIED_RE" \
    "${PODMAN[@]}" push --tls-verify=false --authfile "$PODMAN_AUTH" "$REG/other/podman:1"
  PM rmi "$REG/other/podman:1"
}

step_podman_logout() {
  PM logout --authfile "$PODMAN_AUTH" "$REG"
  if jq -e --arg r "$REG" '.auths[$r]' "$PODMAN_AUTH" >/dev/null; then fail "credentials for $REG still in $PODMAN_AUTH"; fi
  PM rmi "$REG/team/podman:1"
  must_fail "podman pull of team/podman:1 after logout" "$DENIED_RE|authentication required" \
    "${PODMAN[@]}" pull --tls-verify=false --authfile "$PODMAN_AUTH" --signature-policy "$T/policy.json" "$REG/team/podman:1"
}

# =============================================================== docker ====
step_docker_login() {
  echo "$ALICE_PW" | DK login "$REG" -u alice --password-stdin | tee "$T/work/docker-login.out"
  grep -q 'Login Succeeded' "$T/work/docker-login.out" || fail "docker login did not say 'Login Succeeded'"
  jq -e --arg r "$REG" '.auths[$r]' "$DOCKER_CONFIG/config.json" >/dev/null || fail "docker login stored nothing for $REG"
  # Docker keeps the refresh token (identitytoken) when the registry hands one out
  local idt
  idt=$(jq -r --arg r "$REG" '.auths[$r].identitytoken // empty' "$DOCKER_CONFIG/config.json")
  if [[ -n $idt ]]; then
    secret "docker's identity token for alice" "$idt"
    note "docker stored a refresh token (identitytoken) for alice instead of her password"
  fi
  must_fail "docker login as alice with a wrong password" "$DENIED_RE|invalid username" \
    --stdin "not-$ALICE_PW" "$DOCKER_CLI" login "$REG" -u alice --password-stdin
}

step_docker_push_pull() {
  local id d
  scratch_context docker Dockerfile
  DK build -t "$REG/team/docker:1" "$T/docker-ctx"
  id=$(DK image inspect --format '{{.Id}}' "$REG/team/docker:1")
  st_set docker_id "$id"
  DK push "$REG/team/docker:1" | tee "$T/work/docker-push.out"
  d=$({ grep -oE 'digest: sha256:[0-9a-f]{64}' "$T/work/docker-push.out" || true; } | tail -n 1 | cut -d' ' -f2)
  [[ -n $d ]] || fail "no digest in the output of docker push"
  check_remote_manifest team/docker:1 "$d" --creds "alice:$ALICE_PW"
  DK rmi "$REG/team/docker:1"
  DK pull "$REG/team/docker:1"
  expect_eq "$(DK image inspect --format '{{.Id}}' "$REG/team/docker:1")" "$id" "docker image id after push/rmi/pull"
  expect_eq "$(DK image inspect --format '{{join .RepoDigests " "}}' "$REG/team/docker:1")" \
    "$REG/team/docker@$d" "docker RepoDigests after the pull"
}

step_docker_denied() {
  DK tag "$REG/team/docker:1" "$REG/other/docker:1"
  must_fail "docker push to other/docker as alice" "$DENIED_RE" "$DOCKER_CLI" push "$REG/other/docker:1"
  DK rmi "$REG/other/docker:1" >/dev/null
}

step_docker_logout() {
  DK logout "$REG"
  if jq -e --arg r "$REG" '.auths[$r]' "$DOCKER_CONFIG/config.json" >/dev/null; then
    fail "credentials for $REG still in $DOCKER_CONFIG/config.json after docker logout"
  fi
  DK rmi "$REG/team/docker:1" >/dev/null
  must_fail "docker pull of team/docker:1 after logout" "$DENIED_RE|authentication required" \
    "$DOCKER_CLI" pull "$REG/team/docker:1"
}

step_docker_robot() {
  local tok
  tok=$(B token create --name ci-docker --grant 'team/*:push' --expires 1d)
  [[ $tok == berth_rt_* ]] || fail "berth token create printed '$tok', not a berth_rt_ token"
  secret "the robot token ci-docker" "$tok"
  echo "$tok" | DK login "$REG" -u ci-docker --password-stdin | tee "$T/work/docker-login-robot.out"
  grep -q 'Login Succeeded' "$T/work/docker-login-robot.out" || fail "docker login with the robot token did not say 'Login Succeeded'"
  local idt
  idt=$(jq -r --arg r "$REG" '.auths[$r].identitytoken // empty' "$DOCKER_CONFIG/config.json")
  [[ -z $idt ]] || secret "docker's identity token for the robot" "$idt"
  DK pull "$REG/team/docker:1"
  DK tag "$REG/team/docker:1" "$REG/team/docker-robot:1"
  DK push "$REG/team/docker-robot:1" | tee "$T/work/docker-push-robot.out"
  grep -qE 'digest: sha256:[0-9a-f]{64}' "$T/work/docker-push-robot.out" || fail "no digest in the output of docker push"
  DK tag "$REG/team/docker:1" "$REG/other/docker:robot"
  must_fail "docker push to other/docker with the robot token" "$DENIED_RE" "$DOCKER_CLI" push "$REG/other/docker:robot"
  DK logout "$REG"
  DK rmi "$REG/team/docker:1" "$REG/team/docker-robot:1" "$REG/other/docker:robot" >/dev/null
  touch "$T/state/docker_up"
}

# ============================================================== disable ====
step_disable_alice() {
  local r refresh
  # before: her password works, and so does a refresh token (OAuth2 form, POST)
  token_of "alice:$ALICE_PW" repository:team/app:pull >/dev/null
  r=$(token_post grant_type=password username=alice "password=$ALICE_PW" access_type=offline \
    scope=repository:team/app:pull)
  expect_eq "${r%%$'\t'*}" 200 "POST /v2/token grant_type=password as alice"
  refresh=$(jq -r '.refresh_token // empty' <<<"${r#*$'\t'}")
  [[ -n $refresh ]] || fail "no refresh_token for access_type=offline: ${r#*$'\t'}"
  secret "alice's refresh token" "$refresh"
  r=$(token_post grant_type=refresh_token "refresh_token=$refresh" scope=repository:team/app:pull)
  expect_eq "${r%%$'\t'*}" 200 "POST /v2/token grant_type=refresh_token for alice"
  secret "a token issued for a refresh token" "$(jq -r .access_token <<<"${r#*$'\t'}")"

  B user disable alice
  B user list
  r=$(token_req "alice:$ALICE_PW" repository:team/app:pull)
  echo "GET /v2/token as the disabled alice -> ${r%%$'\t'*} ${r#*$'\t'}"
  expect_eq "${r%%$'\t'*} $(jq -r '.errors[0].code' <<<"${r#*$'\t'}")" "401 UNAUTHORIZED" "GET /v2/token as the disabled alice"
  r=$(token_post grant_type=password username=alice "password=$ALICE_PW" scope=repository:team/app:pull)
  echo "POST /v2/token grant_type=password as the disabled alice -> ${r%%$'\t'*} ${r#*$'\t'}"
  expect_eq "${r%%$'\t'*} $(jq -r '.errors[0].code' <<<"${r#*$'\t'}")" "401 UNAUTHORIZED" "POST /v2/token grant_type=password as the disabled alice"
  r=$(token_post grant_type=refresh_token "refresh_token=$refresh" scope=repository:team/app:pull)
  echo "POST /v2/token grant_type=refresh_token of the disabled alice -> ${r%%$'\t'*} ${r#*$'\t'}"
  expect_eq "${r%%$'\t'*} $(jq -r '.errors[0].code' <<<"${r#*$'\t'}")" "401 UNAUTHORIZED" "POST /v2/token grant_type=refresh_token of the disabled alice"
}

step_disabled_skopeo() {
  must_fail "skopeo login as the disabled alice" "$DENIED_RE|invalid username" \
    --stdin "$ALICE_PW" skopeo login --tls-verify=false --authfile "$T/auth/alice-disabled.json" \
    -u alice --password-stdin "$REG"
  # the authfile from her earlier login no longer gets her anything either
  must_fail "skopeo pull of team/app:1 with alice's stored login" "$DENIED_RE|invalid username" \
    skopeo --insecure-policy inspect --raw --tls-verify=false --authfile "$T/auth/alice.json" "docker://$REG/team/app:1"
}

step_disabled_podman() {
  [[ -f $T/state/podman_up ]] || skip_here "podman did not run above"
  must_fail "podman login as the disabled alice" "$DENIED_RE|invalid username" \
    --stdin "$ALICE_PW" "${PODMAN[@]}" login --tls-verify=false --authfile "$T/auth/podman-disabled.json" -u alice --password-stdin "$REG"
}

step_disabled_docker() {
  [[ -f $T/state/docker_up ]] || skip_here "docker did not run above"
  must_fail "docker login as the disabled alice" "$DENIED_RE|invalid username" \
    --stdin "$ALICE_PW" "$DOCKER_CLI" login "$REG" -u alice --password-stdin
}

# ============================================================== secrets ====
step_log_secrets() {
  local log=$T/berth.log label value n bad=0 count=0
  [[ -s $log ]] || fail "the server's log is empty"
  while IFS=$'\t' read -r label value; do
    [[ -n $value ]] || continue
    count=$((count + 1))
    n=$(grep -cF -- "$value" "$log" || true)
    if [[ $n != 0 ]]; then
      echo "LEAK: $label appears $n times in the server's log, e.g.:"
      grep -F -- "$value" "$log" | head -n 2 | cut -c 1-300 | sed 's/^/  | /'
      bad=1
    fi
  done < "$T/state/secrets"
  echo "checked $count secrets against $(wc -l < "$log") lines of the server's log" \
    "($(grep -c 'login failed' "$log" || true) 'login failed' lines)"
  [[ $bad == 0 ]] || fail "the server's log contains credentials (see above)"
}

# ================================================================ steps =====
begin_client local-user
step 1.1 "build OCI layouts (random 2-layer images) for the pushes below" step_layouts
step 1.2 "berth user add alice + grant push on team/**; GET /v2/ answers a Bearer challenge" step_alice_create
step 1.3 "skopeo login as alice (a wrong password is refused)" step_alice_login
step 1.4 "skopeo push to team/app:1 as alice (--dest-creds), digest preserved" step_alice_push
step 1.5 "skopeo pull team/app:1 back as alice, blobs and digests identical" step_alice_pull
group
step 1.6 "alice is denied a push to other/app (skopeo fails, POST upload 401 DENIED)" step_alice_denied
step 1.7 "anonymous pull of team/app:1 is refused" step_anon_team_refused

begin_client robot
step 2.1 "berth token create ci (team/*:push); skopeo push with anything:TOKEN; not team/deep/robot" step_robot_push
step 2.2 "berth token revoke ci; the same push fails, the token endpoint answers 401" step_robot_revoked

begin_client external
step 3.1 "grant group:dev dev/** push; bob (external token) logs in and pushes dev/app:1" step_bob_push
step 3.2 "bob is denied team/app (push and pull) and cannot mount its blobs" step_bob_denied
group
step 3.3 "a wrong login name with bob's token is refused at login" step_bob_wrong_login

begin_client anonymous
step 4.1 "admin user pushes public/base:1" step_admin_push_public
step 4.2 "anonymous pull of public/base:1 (--src-no-creds), digests identical" step_anon_pull_public
step 4.3 "anonymous push to public/base is refused" step_anon_push_refused
group
step 4.4 "the catalog lists only what the caller may pull" step_catalog_filtered

begin_client podman
step 5.1 "podman starts (own storage) and builds FROM scratch + COPY (no network)" step_podman_start
if [[ $GROUP_BROKEN == 0 ]]; then
  step 5.2 "podman login as alice" step_podman_login
  step 5.3 "podman push team/podman:1, rmi, pull, same id and digest" step_podman_push_pull
  step 5.4 "podman push to other/podman is denied" step_podman_denied
  step 5.5 "podman logout; a pull of team/podman:1 is then refused" step_podman_logout
fi

begin_client docker
start_dockerd
step 6.1 "dockerd starts (own data root, vfs, no bridge/iptables)" step_docker_ready
if [[ $GROUP_BROKEN == 0 ]]; then
  step 6.2 "docker login as alice --password-stdin (a wrong password is refused)" step_docker_login
  step 6.3 "docker build + push team/docker:1, rmi, pull, same id" step_docker_push_pull
  step 6.4 "docker push to other/docker is denied" step_docker_denied
  step 6.5 "docker logout; a pull of team/docker:1 is then refused" step_docker_logout
  group
  step 6.6 "docker login with a robot token as the password, push, denied elsewhere, logout" step_docker_robot
fi

begin_client disable
step 7.1 "berth user disable alice; the token endpoint refuses her password and refresh token (401)" step_disable_alice
group
step 7.2 "skopeo login as alice fails; her stored login gets nothing" step_disabled_skopeo
group
step 7.3 "podman login as alice fails" step_disabled_podman
group
step 7.4 "docker login as alice fails" step_disabled_docker

# dockerd is stopped here, in the main shell (it is the parent and can wait for it)
if [[ -n $DOCKERD_PID ]] && kill -0 "$DOCKERD_PID" 2>/dev/null && [[ -f $T/state/docker_up ]]; then
  CLIENT=docker
  if stop_recorded 6.7 dockerd "$DOCKERD_PID" 20; then DOCKERD_PID=""; fi
fi
stop_pid "$DOCKERD_PID" dockerd 20
DOCKERD_PID=""

begin_client secrets
step 8.1 "the server's log contains no password or token used above" step_log_secrets

# ============================================================== summary ====
finish group
