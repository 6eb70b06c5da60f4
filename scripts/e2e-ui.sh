#!/usr/bin/env bash
# End-to-end test of Berth's web UI in a real browser: Debian's headless
# Chromium driven by Playwright (tests/ui), against a real berth filled by
# real clients.
#
#   scripts/e2e-ui.sh [-v] [-k]
#
# Starts, all on 127.0.0.1 with free ports and every file under one
# `mktemp -d` dir (removed on exit):
#   - tests/oidc/provider.mjs, the test OpenID Connect provider (npm
#     oidc-provider), for the UI's single sign-on;
#   - "$BERTH_BIN serve --config CFG --listen 127.0.0.1:0 --data-dir DATA" with
#     [auth] mode = "token", anonymous pull on public/**, [[auth.oidc]] and
#     [ui.sso] pointing at the provider, and a local administrator made with
#     `berth user add admin --admin` on the same data dir.
# Builds nothing: it uses BERTH_BIN, by default target/debug/berth.
#
# Fills it with real clients (skopeo copying OCI layouts made with plain
# tools, curl for what skopeo cannot push):
#   1 public/app:v1, a multi-arch index (linux/amd64, linux/arm64/v8), and a
#     cosign signature of it: an OCI 1.1 referrer manifest (artifactType
#     application/vnd.dev.cosign.artifact.sig.v1+json, subject = the index,
#     an ECDSA P-256 signature made with openssl over cosign's simple-signing
#     payload), pushed with curl. (Debian's skopeo 1.9 is built with sigstore
#     signing disabled, so --sign-by-sigstore-private-key cannot make it.)
#   2 more repositories for search and retention: team/api, team/web,
#     tools/zeta, keep/app with five tags
#   3 public/hostile:1, an image whose manifest carries hostile annotations
#     (<script>alert(1)</script>, "><img src=x onerror=alert(2)>); a push to a
#     repository named <script>... is refused by the registry
#   4 the browser tests: node --test tests/ui/ui.test.mjs (sign-in, single
#     sign-on, browsing, search, stars, the retention preview, a robot token
#     made and revoked in the UI with skopeo pushes, XSS rendered inert, pages
#     without JavaScript, axe-core on every page, page weight), one result line
#     per test
#
# Screenshots: full pages in ${CARGO_TARGET_DIR:-target}/ui-screenshots/;
# with E2E_UI_DOCS=1 the viewport shots of docs/ui.md are written to docs/ui/.
#
# Options:  -v, --verbose  print the output of every step as it runs
#           -k, --keep     keep the temp dir (logs, configs, registry data)
# Env:      BERTH_BIN, CHROMIUM (default /usr/bin/chromium), E2E_KEEP=1, E2E_UI_DOCS=1,
#           E2E_UI_ONLY=REGEX (run only the browser tests whose names match)
#
# Needs: curl jq node openssl skopeo chromium, and tests/ui's and tests/oidc's
# npm packages (scripts/install-deps.sh installs all of them).
#
# Output: one line per step and per browser test (PASS/FAIL), and last exactly
# one line
#   E2E-UI: N passed, M failed, K skipped
# Exit status 1 if any step failed.
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/berth}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
UI_TESTS=$REPO_ROOT/tests/ui
OIDC_DIR=$REPO_ROOT/tests/oidc

E2E_NAME=e2e-ui
E2E_LABEL=E2E-UI
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
parse_args "$@"

require_tools "scripts/install-deps.sh" curl jq node openssl skopeo tar gzip sha256sum timeout stat head mktemp
[[ -x $CHROMIUM ]] || setup_fail "Chromium not found at $CHROMIUM (apt-get install chromium, or scripts/install-deps.sh)"
[[ -d $UI_TESTS/node_modules/playwright-core ]] || setup_fail "tests/ui/node_modules is missing: run scripts/install-deps.sh (npm ci in tests/ui)"
[[ -d $OIDC_DIR/node_modules/oidc-provider ]] || setup_fail "tests/oidc/node_modules is missing: run scripts/install-deps.sh (npm ci in tests/oidc)"

make_temp_dir
mkdir -p "$T/auth" "$T/home"
stop_on_exit BERTH_PID berth 10
stop_on_exit IDP_PID oidc-provider 5

rand() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
ADMIN_PW="admin-pw-$(rand)"

# ------------------------------------------------------------ the provider ----
node "$OIDC_DIR/provider.mjs" --redirect-uri http://127.0.0.1/ui/sso/callback \
  --extra-claims '{"groups":["devs"]}' > "$T/oidc.log" 2>&1 < /dev/null &
IDP_PID=$!
IDP_URL=$(wait_for_line "$T/oidc.log" 'listening on http://127\.0\.0\.1:[0-9]+' "$IDP_PID" 30) || {
  tail -n 20 "$T/oidc.log" | sed 's/^/     | /'
  setup_fail "the OpenID Connect provider did not print 'listening on' within 30 s"
}
IDP_URL=${IDP_URL#listening on }
echo "e2e-ui: OpenID Connect provider at $IDP_URL"

# ---------------------------------------------------------------- berth ----
berth_setup
cat > "$CFG" <<EOF
[auth]
mode = "token"
anonymous = ["public/**"]

[[auth.oidc]]
issuer = "$IDP_URL"
audience = "berth"
groups_claim = "groups"
[[auth.oidc.rules]]
claims = { sub = "*" }
grants = ["home/{sub}/**:push"]

[ui.sso]
issuer = "$IDP_URL"
client_id = "berth"
label = "Sign in with the test provider"
EOF
start_berth 401 "auth.mode = token"
echo "e2e-ui: registry ready at $URL (token auth, single sign-on through $IDP_URL)"

export HOME=$T/home
unset XDG_CONFIG_HOME XDG_RUNTIME_DIR DOCKER_CONFIG DOCKER_HOST
client_env "$T/auth/default.json"
ADMIN=(--dest-creds "admin:$ADMIN_PW")

# A bearer token for curl: token SCOPE...
token() {
  local args=() s
  for s in "$@"; do args+=(--data-urlencode "scope=$s"); done
  curl -fsS --max-time 30 -G -u "admin:$ADMIN_PW" --data-urlencode service=berth "${args[@]}" "$URL/v2/token" | jq -r .token
}
# curl_blob REPO FILE TOKEN: a monolithic upload; prints the digest.
curl_blob() {
  local d
  d=sha256:$(sha_of "$2")
  curl -fsS --max-time 30 -H "Authorization: Bearer $3" -X POST --data-binary @"$2" \
    -H 'Content-Type: application/octet-stream' "$URL/v2/$1/blobs/uploads/?digest=$d" -o /dev/null
  echo "$d"
}

# ---------------------------------------------------------------- steps ----
step_admin() {
  echo "$ADMIN_PW" | B user add admin --admin
  B grant add group:devs 'team/**' pull
  B user list
}

step_multi() {
  build_multi ui
  push_layout multi public/app:v1 --all "${ADMIN[@]}"
  check_remote_manifest public/app:v1 "$(st multi_index)"
}

# A cosign signature of the index as an OCI 1.1 referrer: the simple-signing
# payload, signed with a fresh ECDSA P-256 key, checked with its public key.
step_signature() {
  local idx tok payload pd sig empty ed man idx_size code
  idx=$(st multi_index)
  idx_size=$(stat -c %s "$T/layout-multi/blobs/sha256/${idx#sha256:}")
  openssl ecparam -name prime256v1 -genkey -noout -out "$T/work/cosign.key"
  openssl ec -in "$T/work/cosign.key" -pubout -out "$T/work/cosign.pub" 2>/dev/null
  payload=$T/work/payload.json
  jq -cjn --arg ref "$REG/public/app" --arg d "$idx" \
    '{critical: {identity: {"docker-reference": $ref}, image: {"docker-manifest-digest": $d},
      type: "cosign container image signature"}, optional: null}' > "$payload"
  openssl dgst -sha256 -sign "$T/work/cosign.key" -out "$T/work/payload.sig" "$payload"
  openssl dgst -sha256 -verify "$T/work/cosign.pub" -signature "$T/work/payload.sig" "$payload"
  sig=$(base64 -w0 "$T/work/payload.sig")
  tok=$(token "repository:public/app:pull,push")
  pd=$(curl_blob public/app "$payload" "$tok")
  empty=$T/work/empty.json
  printf '{}' > "$empty"
  ed=$(curl_blob public/app "$empty" "$tok")
  man=$T/work/sig-manifest.json
  jq -cjn --arg pd "$pd" --argjson ps "$(stat -c %s "$payload")" --arg ed "$ed" --arg sig "$sig" \
    --arg idx "$idx" --argjson is "$idx_size" --arg mt "$MT_INDEX" '
    {schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
     artifactType: "application/vnd.dev.cosign.artifact.sig.v1+json",
     config: {mediaType: "application/vnd.oci.empty.v1+json", digest: $ed, size: 2},
     layers: [{mediaType: "application/vnd.dev.cosign.simplesigning.v1+json", digest: $pd, size: $ps,
               annotations: {"dev.cosignproject.cosign/signature": $sig}}],
     subject: {mediaType: $mt, digest: $idx, size: $is},
     annotations: {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}}' > "$man"
  code=$(curl -sS --max-time 30 -o "$T/work/sig-put.out" -w '%{http_code}' -H "Authorization: Bearer $tok" \
    -X PUT --data-binary @"$man" -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    "$URL/v2/public/app/manifests/sha256:$(sha_of "$man")")
  expect_eq "$code" 201 "PUT of the signature manifest"
  st_set signature "sha256:$(sha_of "$man")"
  # The registry lists it as a referrer of the index.
  curl -fsS -H "Authorization: Bearer $tok" "$URL/v2/public/app/referrers/$idx" > "$T/work/referrers.json"
  cat "$T/work/referrers.json"; echo
  expect_eq "$(jq -r '.manifests[0].digest' "$T/work/referrers.json")" "$(st signature)" "the referrer listed"
}

step_more() {
  local name
  for name in team-api team-web tools-zeta keep-app; do
    build_layout "$name" 1 "ui-$name"
  done
  push_layout team-api team/api:1.0 "${ADMIN[@]}"
  push_layout team-web team/web:latest "${ADMIN[@]}"
  push_layout tools-zeta tools/zeta:2 "${ADMIN[@]}"
  # keep/app: five tags, a second apart, for the retention preview.
  for i in 0 1 2 3 4; do
    push_layout keep-app "keep/app:t$i" "${ADMIN[@]}"
    sleep 1
  done
  # The image the robot token of the browser test pushes.
  build_layout robot 1 ui-robot
}

# An image whose manifest carries hostile annotations, pushed with skopeo
# (digests preserved, so the registry keeps the manifest bytes as written).
step_hostile() {
  local L=$T/layout-hostile d m man mand mans
  mkdir -p "$L"
  d=$(make_image "$L" amd64 "" 1 ui-hostile)
  m=$(jq -r .digest <<<"$d")
  man=$(mktemp "$T/work/man.XXXXXX")
  jq -cj '.annotations += {
      "org.opencontainers.image.description": "<script>alert(1)</script>",
      "org.example.evil": "\"><img src=x onerror=alert(2)>"}' "$L/blobs/sha256/${m#sha256:}" > "$man"
  mans=$(stat -c %s "$man")
  mand=$(add_blob "$L" "$man")
  write_layout_index "$L" "$(jq -cn --arg mt "$MT_MANIFEST" --arg d "sha256:$mand" --argjson s "$mans" \
    '{mediaType: $mt, digest: $d, size: $s}')" v1
  push_layout hostile public/hostile:1 "${ADMIN[@]}"
  check_remote_manifest public/hostile:1 "sha256:$mand"
  st_set hostile "sha256:$mand"
  # A repository name that is markup is no repository name: skopeo refuses
  # to send it, so curl does, and the registry refuses it.
  local tok code
  tok=$(token "repository:public/hostile:pull,push")
  code=$(curl -sS --max-time 30 -o "$T/work/name.out" -w '%{http_code}' -H "Authorization: Bearer $tok" \
    -X PUT --data-binary @"$man" -H "Content-Type: $MT_MANIFEST" \
    "$URL/v2/public/%3Cscript%3Ealert(3)%3C%2Fscript%3E/manifests/1")
  cat "$T/work/name.out"; echo
  [[ $code == 4* ]] || fail "a manifest PUT to a repository named <script>... answered $code, not 4xx"
  echo "refused with $code"
}

# The browser tests, one result line each (node's TAP reporter to a file,
# its spec reporter to the step's log).
step_browser() {
  local shots=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/ui-screenshots
  mkdir -p "$shots"
  E2E_UI_URL=$URL E2E_UI_REG=$REG E2E_UI_ADMIN_PW=$ADMIN_PW E2E_UI_CHROMIUM=$CHROMIUM \
    E2E_UI_SHOTS=$shots E2E_UI_DOCS_DIR=$([[ ${E2E_UI_DOCS:-0} == 1 ]] && echo "$REPO_ROOT/docs/ui" || true) \
    E2E_UI_ROBOT_LAYOUT=$T/layout-robot E2E_UI_MULTI_INDEX=$(st multi_index) \
    E2E_UI_SIGNATURE=$(st signature) E2E_UI_HOSTILE=$(st hostile) \
    timeout 300 node --test --test-concurrency=1 ${E2E_UI_ONLY:+--test-name-pattern="$E2E_UI_ONLY"} \
      --test-reporter=spec --test-reporter-destination=stdout \
      --test-reporter=tap --test-reporter-destination="$T/browser.tap" \
      "$UI_TESTS/ui.test.mjs"
}

begin_client setup
step 1.1 "berth user add admin --admin; grant group:devs pull on team/**" step_admin
step 1.2 "skopeo push of a multi-arch index to public/app:v1" step_multi
step 1.3 "a cosign signature of the index as an OCI 1.1 referrer (openssl + curl)" step_signature
step 1.4 "skopeo pushes of team/api, team/web, tools/zeta, keep/app (five tags)" step_more
step 1.5 "skopeo push of an image with hostile annotations; a markup repository name refused" step_hostile

begin_client browser
if [[ $GROUP_BROKEN == 0 && $FAILED == 0 ]]; then
  step 2.0 "node --test tests/ui/ui.test.mjs (headless Chromium)" step_browser
  # One line per browser test, from the TAP report's top-level results.
  if [[ -s $T/browser.tap ]]; then
    n=0
    while IFS= read -r line; do
      n=$((n + 1))
      if [[ $line == *' # SKIP '* ]]; then
        continue   # left out by E2E_UI_ONLY
      elif [[ $line =~ ^ok\ [0-9]+\ -\ (.*)$ ]]; then
        record PASS "2.$n" "${BASH_REMATCH[1]}"
      elif [[ $line =~ ^not\ ok\ [0-9]+\ -\ (.*)$ ]]; then
        record FAIL "2.$n" "${BASH_REMATCH[1]}"
      fi
    done < <(grep -E '^(not )?ok [0-9]+ - ' "$T/browser.tap")
  fi
else
  record FAIL 2.0 "browser tests not run: the registry could not be filled"
fi

finish group
