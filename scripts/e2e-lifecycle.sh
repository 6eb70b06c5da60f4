#!/usr/bin/env bash
# End-to-end test of Berth's lifecycle features with real clients (skopeo,
# podman, curl) and the berth CLI: tag expiry by name (--ttl-, --idle-),
# retention policies with preview, run and audit, online garbage collection
# with its grace period, fsck, and the image inventory (GET /v1/images).
#
#   scripts/e2e-lifecycle.sh [-v] [-k]
#
# Starts "$BERTH_BIN serve --config CFG --listen 127.0.0.1:0 --data-dir DATA"
# (every file under one `mktemp -d` dir, removed on exit) with the lifecycle
# schedules off (gc, retention and expiry intervals 0): every run is made by
# hand with the berth CLI on the same data dir while the server runs. Time
# moves through BERTH_TEST_CLOCK_OFFSET_FILE (milliseconds added to the clock,
# read on every call), set for the server and for every CLI call alike, so
# days pass in seconds. Images are built locally as OCI layouts; nothing is
# pulled from any registry.
#
# Timeline (clock offset) and what it proves, one step each (PASS/FAIL/SKIP):
#   1 +0     skopeo pushes lc/app:v1 (+ build-1, build-2: the same image),
#            pr-1--ttl-1h, main--idle-2d and stale--idle-2d (distinct images),
#            a signature tag sha256-<v1 hex>.sig and the index lc/multi:v1;
#            a malformed suffix (x--ttl-0h, --ttl-400d) is refused with 400
#            MANIFEST_INVALID naming the tag
#   2 +0     podman pulls lc/app:main--idle-2d; the pull is counted
#   3 +0     retention set 'lc/**' --keep-last 1 --keep-pattern 'v*': preview
#            explains every tag (keep_patterns, keep_last, retention, ttl,
#            idle, follows_subject)
#     +2h    retention run: pr-1--ttl-1h (ttl) and build-1 (retention) go, the
#            audit log says so; gc inside the grace period removes nothing
#   4 +36h   podman pulls main--idle-2d again
#     +72h   retention run: stale--idle-2d (never pulled) goes, main--idle-2d
#            (pulled 36 h ago) stays
#   5 +72h   gc: the dry run predicts the run; the run reclaims the blobs of
#            pr-1 (unreferenced for 70 h) and not those of stale (0 h)
#     +97h   gc reclaims stale's blobs; v1 and lc/multi:v1 copy back byte-
#            identical with skopeo, podman pulls v1
#   6 +97h   DELETE of v1's manifest by digest (curl)
#     +122h  gc removes the signature tag with its manifest, its blobs and v1's;
#     +147h  a further gc finds nothing more
#   7        pushes after GC of images whose blobs were collected (v1 again, and
#            a new image reusing collected layers) upload them again and pull
#            back identical
#   8        fsck: clean; a stray file in the blob store is reported
#            (orphan_file, non-zero exit) and removed by --repair
#   9        GET /v1/images: platforms and provenance of lc/multi:v1, one row
#            per tag of lc/app, paging by cursor, expiring_before filters
#
# Options:  -v, --verbose  print the output of every step as it runs
#           -k, --keep     keep the temp dir (logs, layouts, registry data)
# Env:      BERTH_BIN (default ${CARGO_TARGET_DIR:-<repo>/target}/debug/berth),
#           E2E_KEEP=1 (= --keep)
#
# Needs on the PATH: curl jq skopeo podman tar gzip sha256sum cmp timeout date
# (installed by scripts/install-deps.sh).
#
# Output: one line per step (PASS/FAIL/SKIP, with the step's log on FAIL), a
# result per group, and last exactly one line
#   E2E-LIFECYCLE: N passed, M failed, K skipped
# Exit status 1 if any step failed.
set -euo pipefail
shopt -s inherit_errexit   # errors inside $(...) count too

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/berth}

# Options, tools, the temp dir and its exit trap, starting berth, the step
# runner and its helpers, OCI layouts, podman and the summary: shared with
# scripts/e2e.sh and scripts/e2e-auth.sh.
E2E_NAME=e2e-lifecycle
E2E_LABEL=E2E-LIFECYCLE
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
parse_args "$@"

require_tools "scripts/install-deps.sh" \
  curl jq skopeo podman tar gzip sha256sum cmp timeout date stat head mktemp

make_temp_dir
stop_on_exit BERTH_PID berth 10

# ---------------------------------------------------------------- berth ----
CLOCK=$T/clock   # milliseconds added to the clock of the server and the CLI
berth_setup "BERTH_TEST_CLOCK_OFFSET_FILE=$CLOCK"
echo 0 > "$CLOCK"
cat > "$CFG" <<EOF
# Every lifecycle job is run by hand with the berth CLI.
[gc]
interval_secs = 0

[retention]
interval_secs = 0

[lifecycle]
expiry_interval_secs = 0
EOF
start_berth 200
echo "e2e-lifecycle: registry ready at $URL (image names use $REG; clock offset file $CLOCK)"

client_env "$T/auth.json"

# --------------------------------------------------------- step helpers ----
HOUR=3600000
DAY=$((24 * HOUR))

clock_set() { # ms: written whole (rename), the server reads the file on every call
  printf '%s\n' "$1" > "$CLOCK.new"
  mv "$CLOCK.new" "$CLOCK"
  echo "clock offset now $1 ms ($(awk -v m="$1" 'BEGIN { printf "%.2f", m / 86400000 }') d)"
}
clock_ms() { cat "$CLOCK"; }
now_ms() { echo $(( $(date +%s%3N) + $(clock_ms) )); }   # the registry's "now"
rfc3339_of_ms() { date -u -d "@$(($1 / 1000))" +%Y-%m-%dT%H:%M:%SZ; }
ms_of_rfc3339() { echo $(( $(date -u -d "$1" +%s) * 1000 )); }

blob_path() { local h=${1#sha256:}; echo "$DATA/blobs/sha256/${h:0:2}/$h"; }
on_disk() { [[ -f $(blob_path "$1") ]]; }
blobs_of() { local n; for n in "$@"; do st "${n}_blobs"; done; }   # image names -> their config and layer digests
expect_on_disk() { # what image-name...: the config and layer files of the images are in the blob store
  local what=$1 d n=0; shift
  for d in $(blobs_of "$@"); do
    on_disk "$d" || fail "$what: blob $d is not in the blob store ($(blob_path "$d"))"
    n=$((n + 1))
  done
  echo "$what: $n blob files present"
}
expect_gone() { # what image-name...: ... are not
  local what=$1 d n=0; shift
  for d in $(blobs_of "$@"); do
    ! on_disk "$d" || fail "$what: blob $d is still in the blob store ($(blob_path "$d"))"
    n=$((n + 1))
  done
  echo "$what: $n blob files gone"
}
size_sum() { # image-name... -> the sum of the sizes of their config and layer files
  local d s=0 f
  for d in $(blobs_of "$@"); do
    f=$(find "$T"/layout-*/blobs/sha256 -name "${d#sha256:}" -print -quit)
    [[ -n $f ]] || fail "internal: blob $d is in no layout"
    s=$((s + $(stat -c %s "$f")))
  done
  echo "$s"
}

tags_of() { curl -sSf --max-time 30 "$URL/v2/$1/tags/list" | jq -c '.tags // [] | sort'; }
expect_tags() { # repo expected-json-array-sorted
  local got
  got=$(tags_of "$1")
  echo "tags of $1: $got"
  expect_eq "$got" "$(jq -c 'sort' <<<"$2")" "GET /v2/$1/tags/list"
}
manifest_code() { # repo reference
  http_code GET "$URL/v2/$1/manifests/$2" -H "Accept: $MT_MANIFEST, $MT_INDEX"
}

# HEAD /v2/REPO/manifests/REF must answer DIGEST (a HEAD is not a pull: it
# leaves the idle clock of a tag alone).
check_head_digest() { # repo reference expected-digest
  local got
  got=$(curl -sSf --max-time 30 -I -H "Accept: $MT_MANIFEST, $MT_INDEX" "$URL/v2/$1/manifests/$2" \
    | tr -d '\r' | sed -nE 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')
  expect_eq "$got" "$3" "Docker-Content-Digest of HEAD /v2/$1/manifests/$2"
}

# gc_json NAME [--dry-run]: berth gc --json, the report kept as $T/work/gc-NAME.json
gc_json() {
  local name=$1 out=$T/work/gc-$1.json
  shift
  B gc --json "$@" > "$out"
  echo "berth gc $* -> $(cat "$out")"
  jq -e 'type == "object"' "$out" >/dev/null || fail "berth gc --json $* printed no JSON object"
}
gc_field() { jq -r ".$2" "$T/work/gc-$1.json"; }
expect_gc() { # name "field=value ..." : fields of a gc report
  local name=$1 kv
  for kv in $2; do
    expect_eq "$(gc_field "$name" "${kv%%=*}")" "${kv#*=}" "${kv%%=*} in the report of berth gc ($name)"
  done
}

# preview NAME [args]: berth retention preview --json, lines kept as $T/work/preview-NAME.jsonl
preview() {
  local name=$1 out=$T/work/preview-$1.jsonl
  shift
  B retention preview --json "$@" > "$out"
  jq -r '"\(.action) \(.rule) \(.repository)\(if .tag then ":" + .tag else "@" + .digest end)  \(.reason)"' "$out"
}
# The decisions of a preview for the tags of REPO: {"tag": "action rule"}.
decisions() { # name repo
  jq -sS --arg r "$2" '[.[] | select(.repository == $r and .tag) | {(.tag): "\(.action) \(.rule)"}] | add // {}' \
    "$T/work/preview-$1.jsonl"
}
expect_decisions() { # name repo expected-json
  expect_eq "$(decisions "$1" "$2" | jq -c .)" "$(jq -cS . <<<"$3")" "decisions of the preview ($1) for the tags of $2"
}
entry() { # name repo tag -> the preview's JSON line for the tag
  jq -c --arg r "$2" --arg t "$3" 'select(.repository == $r and .tag == $t)' "$T/work/preview-$1.jsonl"
}

# audit_entry ACTION TARGET: the detail JSON of the newest audit line for it
audit_entry() {
  B audit --limit 500 > "$T/work/audit.out"
  awk -v a="$1" -v t="$2" '$3 == a && $4 == t { sub(/^[^{]*/, ""); print; exit }' "$T/work/audit.out"
}
expect_audit() { # action target rule
  local detail actor
  detail=$(audit_entry "$1" "$2")
  [[ -n $detail ]] || { cat "$T/work/audit.out"; fail "berth audit shows no $1 of $2"; }
  actor=$(awk -v a="$1" -v t="$2" '$3 == a && $4 == t { print $2; exit }' "$T/work/audit.out")
  echo "audit: $actor $1 $2 $detail"
  expect_eq "$(jq -r .rule <<<"$detail")" "$3" "rule in the audit detail of $1 $2"
  [[ -n $(jq -r '.reason // empty' <<<"$detail") ]] || fail "no reason in the audit detail of $1 $2: $detail"
}

inventory() { # query-string -> the JSON answer of GET /v1/images?QUERY (kept as $T/work/inventory.json)
  curl -sSf --max-time 30 "$URL/v1/images?$1" > "$T/work/inventory.json" || fail "GET /v1/images?$1 failed"
  cat "$T/work/inventory.json"
}
# The inventory row of repo:tag (GET /v1/images first writes the pulls the
# server gathers in memory).
inventory_row() { inventory "repository=$1" | jq -c --arg t "$2" '.images[] | select(.tag == $t)'; }

# ------------------------------------------------------------- layouts ----
# An image that reuses the layers of other layouts' images and adds one new
# layer: the layer files are copied, the config lists their diff_ids.
build_reusing() { # name source-name...
  local name=$1 L=$T/layout-$1 src m c layers="[]" l d
  shift
  mkdir -p "$L/blobs/sha256"
  for src in "$@"; do
    m=$T/layout-$src/blobs/sha256/$(st "${src}_manifest" | sed 's/^sha256://')
    c=$T/layout-$src/blobs/sha256/$(jq -r '.config.digest | ltrimstr("sha256:")' "$m")
    for l in $(jq -r '.layers[].digest | ltrimstr("sha256:")' "$m"); do cp "$T/layout-$src/blobs/sha256/$l" "$L/blobs/sha256/"; done
    layers=$(jq -c --slurpfile m "$m" --slurpfile c "$c" \
      '. + [range(0; $m[0].layers | length) as $i | {desc: $m[0].layers[$i], diffid: $c[0].rootfs.diff_ids[$i]}]' <<<"$layers")
  done
  l=$(make_layer "$L" "lc-$name-new")
  layers=$(jq -c --argjson l "$l" '. + [$l]' <<<"$layers")
  d=$(image_of_layers "$L" amd64 "" "lc-$name" "$layers")
  write_layout_index "$L" "$(jq -c 'del(.platform, .config)' <<<"$d")" v1
  layout_state "$name" "$(jq -r .digest <<<"$d")"
}

# ============================================================== pushes =====
step_layouts() {
  local n f
  build_layout v1 2 lc-v1
  for n in pr main stale sig; do build_layout "$n" 1 "lc-$n"; done
  build_multi lc-multi
  for f in "$T"/layout-*/blobs/sha256/*; do
    expect_eq "$(sha_of "$f")" "$(basename "$f")" "blob file $f"
  done
  for n in v1 pr main stale sig; do echo "$n: $(st "${n}_manifest") blobs: $(st "${n}_blobs")"; done
  echo "multi: $(st multi_index)"
  st_set sig_tag "sha256-$(st v1_manifest | sed 's/^sha256://').sig"
}

step_push_v1() {
  local t
  for t in v1 build-1 build-2; do
    push_layout v1 "lc/app:$t"
    check_remote_manifest "lc/app:$t" "$(st v1_manifest)"
  done
  expect_on_disk "v1's config and layers" v1
}

step_push_suffixed() {
  # checked with HEAD: a GET would count as a pull (idle tags)
  push_layout pr lc/app:pr-1--ttl-1h
  check_head_digest lc/app pr-1--ttl-1h "$(st pr_manifest)"
  push_layout main lc/app:main--idle-2d
  check_head_digest lc/app main--idle-2d "$(st main_manifest)"
  push_layout stale lc/app:stale--idle-2d
  check_head_digest lc/app stale--idle-2d "$(st stale_manifest)"
  expect_on_disk "the suffixed tags' images" pr main stale
}

step_push_sig() {
  push_layout sig "lc/app:$(st sig_tag)"
  check_remote_manifest "lc/app:$(st sig_tag)" "$(st sig_manifest)"
  expect_tags lc/app "[\"v1\",\"build-1\",\"build-2\",\"pr-1--ttl-1h\",\"main--idle-2d\",\"stale--idle-2d\",\"$(st sig_tag)\"]"
}

step_push_multi() {
  SK copy --all --preserve-digests --dest-tls-verify=false "oci:$T/layout-multi:v1" "docker://$REG/lc/multi:v1"
  check_remote_manifest lc/multi:v1 "$(st multi_index)"
  check_remote_manifest "lc/multi@$(st multi_amd64_manifest)" "$(st multi_amd64_manifest)"
  check_remote_manifest "lc/multi@$(st multi_arm64_manifest)" "$(st multi_arm64_manifest)"
  expect_tags lc/multi '["v1"]'
}

step_invalid_suffix() {
  local before body code
  before=$(tags_of lc/app)
  # the image is v1's: its blobs are stored and used already, only the manifest
  # PUT can fail; skopeo shows the registry's error: "manifest invalid:
  # <Berth's message naming the tag>"
  must_fail "skopeo push to lc/app:x--ttl-0h (a --ttl-0h suffix)" 'manifest invalid: .*x--ttl-0h' \
    skopeo --insecure-policy copy --preserve-digests --dest-tls-verify=false \
    "oci:$T/layout-v1:v1" "docker://$REG/lc/app:x--ttl-0h"
  # the exact answer, for a window beyond 365d
  body=$(mktemp "$T/work/put.XXXXXX")
  code=$(curl -sS --max-time 30 -o "$body" -w '%{http_code}' -X PUT -H "Content-Type: $MT_MANIFEST" \
    --data-binary "@$T/layout-v1/blobs/sha256/$(st v1_manifest | sed 's/^sha256://')" \
    "$URL/v2/lc/app/manifests/y--ttl-400d")
  echo "PUT /v2/lc/app/manifests/y--ttl-400d -> $code $(cat "$body")"
  expect_eq "$code $(jq -r '.errors[0].code' "$body")" "400 MANIFEST_INVALID" "PUT /v2/lc/app/manifests/y--ttl-400d"
  jq -r '.errors[0].message' "$body" | grep -q 'y--ttl-400d' || fail "the error message does not name the tag y--ttl-400d"
  expect_eq "$(tags_of lc/app)" "$before" "tags of lc/app after the refused pushes"
  expect_eq "$(manifest_code lc/app x--ttl-0h)" 404 "GET /v2/lc/app/manifests/x--ttl-0h"
}

# ============================================================== podman =====
step_podman_start() {
  podman_runs
  touch "$T/state/podman_up"
}

# A pull of lc/app:main--idle-2d by tag: with podman, or with skopeo when
# podman cannot run here. Every GET of that tag is counted in state main_pulls.
pull_main() {
  echo pull >> "$T/state/main_pulls"
  if [[ -f $T/state/podman_up ]]; then
    podman_pull lc/app:main--idle-2d main
  else
    rm -rf "$T/work/pull-main"
    SK copy --src-tls-verify=false "docker://$REG/lc/app:main--idle-2d" "oci:$T/work/pull-main:x"
    expect_eq "$(jq -r '.manifests[0].digest' "$T/work/pull-main/index.json")" "$(st main_manifest)" "digest skopeo pulled"
    note "podman did not run above: the pull was made with skopeo"
  fi
}

podman_pull() { # repo:tag name-of-layout: pull by tag, image id = config digest, then rmi
  PM pull --tls-verify=false --signature-policy "$T/policy.json" "$REG/$1"
  expect_eq "sha256:$(PM image inspect --format '{{.Id}}' "$REG/$1")" "$(st "$2_config")" "podman image id of $REG/$1"
  expect_eq "$(PM image inspect --format '{{.Digest}}' "$REG/$1")" "$(st "$2_manifest")" "podman manifest digest of $REG/$1"
  PM rmi "$REG/$1" >/dev/null
}

# pulled REPO TAG BEFORE: waits (up to 5 s) until GET /v1/images counts one
# pull of REPO:TAG more than BEFORE; prints the row. The server gathers pulls
# in memory and writes them every second, and before answering /v1/images.
pulled() {
  local row i
  for ((i = 0; i < 50; i++)); do
    row=$(inventory_row "$1" "$2")
    if [[ $(jq -r .pull_count <<<"$row") != "$3" ]]; then break; fi
    sleep 0.1
  done
  echo "inventory after the pull ($((i + 1)) reads): $row" >&2
  [[ $i == 0 ]] || note "GET /v1/images showed the pull of $1:$2 only at read $((i + 1)) (0.1 s apart)" >&2
  echo "$row"
}

step_podman_pull_idle() {
  local row t0 before
  before=$(inventory_row lc/app main--idle-2d | jq -r .pull_count)
  expect_eq "$before" 0 "pull_count of lc/app:main--idle-2d before any pull"
  t0=$(now_ms)
  pull_main
  row=$(pulled lc/app main--idle-2d "$before")
  expect_eq "$(jq -r .pull_count <<<"$row")" $((before + 1)) "pull_count of lc/app:main--idle-2d (before the pull: $before)"
  [[ $(jq -r .last_pulled_at <<<"$row") != null ]] || fail "no last_pulled_at for lc/app:main--idle-2d after the pull"
  (( $(ms_of_rfc3339 "$(jq -r .last_pulled_at <<<"$row")") >= t0 / 1000 * 1000 )) \
    || fail "last_pulled_at of lc/app:main--idle-2d is before the pull"
  row=$(inventory_row lc/app stale--idle-2d)
  expect_eq "$(jq -r '"\(.pull_count) \(.last_pulled_at)"' <<<"$row")" "0 null" "pull_count and last_pulled_at of the never pulled stale--idle-2d"
}

# =========================================================== retention =====
step_policy_preview() {
  B retention set 'lc/**' --keep-last 1 --keep-pattern 'v*'
  B retention show | tee "$T/work/policies.out"
  grep -qE '^lc/\*\*[[:space:]].*"keep_last":1' "$T/work/policies.out" || fail "berth retention show does not list lc/** with keep_last 1"
  preview t0
  expect_decisions t0 lc/app "{\"v1\": \"keep keep_patterns\", \"build-2\": \"keep keep_last\",
    \"build-1\": \"delete retention\", \"pr-1--ttl-1h\": \"keep ttl\", \"main--idle-2d\": \"keep idle\",
    \"stale--idle-2d\": \"keep idle\", \"$(st sig_tag)\": \"keep follows_subject\"}"
  expect_decisions t0 lc/multi '{"v1": "keep keep_patterns"}'
  # the ttl tag ends one hour after its push
  local e pushed
  e=$(entry t0 lc/app pr-1--ttl-1h)
  pushed=$(ms_of_rfc3339 "$(inventory_row lc/app pr-1--ttl-1h | jq -r .pushed_at)")
  (( $(jq -r .expires_ms <<<"$e") - pushed >= HOUR - 1000 && $(jq -r .expires_ms <<<"$e") - pushed <= HOUR + 1000 )) \
    || fail "expires_ms of pr-1--ttl-1h is not its push time + 1 h: $e (pushed_at $pushed)"
  # build-1 goes, but v1 and build-2 name the same manifest: it stays
  expect_eq "$(jq -sc '[.[] | select(.tag == null)]' "$T/work/preview-t0.jsonl")" "[]" "manifests the preview would delete"
}

step_run_ttl() {
  clock_set $((2 * HOUR))
  preview t2h --deleted-only
  expect_eq "$(jq -sc '[.[] | "\(.tag // .digest) \(.rule)"] | sort' "$T/work/preview-t2h.jsonl")" \
    "$(jq -cn --arg d "$(st pr_manifest)" '["build-1 retention", "pr-1--ttl-1h ttl", "\($d) ttl"] | sort')" \
    "what the preview at +2h would delete"
  B retention run
  expect_tags lc/app "[\"v1\",\"build-2\",\"main--idle-2d\",\"stale--idle-2d\",\"$(st sig_tag)\"]"
  expect_eq "$(manifest_code lc/app "$(st pr_manifest)")" 404 "GET /v2/lc/app/manifests/<pr-1's digest> after the run"
  check_remote_manifest lc/app:v1 "$(st v1_manifest)"
  expect_on_disk "pr-1's blobs (left to garbage collection)" pr
}

step_audit_ttl() {
  expect_audit tag.delete lc/app:pr-1--ttl-1h ttl
  expect_audit manifest.delete "lc/app@$(st pr_manifest)" ttl
  expect_audit tag.delete lc/app:build-1 retention
  if grep -qF "lc/app@$(st v1_manifest)" "$T/work/audit.out"; then fail "the audit log shows a deletion of v1's manifest"; fi
}

step_gc_in_grace() {
  gc_json t2h
  expect_gc t2h "dry_run=false signature_tags_removed=0 manifests_removed=0 links_removed=0 blobs_removed=0 orphan_files_removed=0"
  expect_on_disk "pr-1's blobs (deleted 0 h ago, grace 24 h)" pr
}

# ================================================================ idle =====
step_idle_pull() {
  local row t0 before
  clock_set $((36 * HOUR))
  before=$(inventory_row lc/app main--idle-2d | jq -r .pull_count)
  t0=$(now_ms)
  pull_main
  row=$(pulled lc/app main--idle-2d "$before")
  expect_eq "$(jq -r .pull_count <<<"$row")" $((before + 1)) "pull_count of lc/app:main--idle-2d (before the pull: $before)"
  (( $(ms_of_rfc3339 "$(jq -r .last_pulled_at <<<"$row")") >= t0 / 1000 * 1000 )) \
    || fail "last_pulled_at of lc/app:main--idle-2d ($(jq -r .last_pulled_at <<<"$row")) is not the time of the pull at +36h ($(rfc3339_of_ms "$t0"))"
  preview t36h
  expect_decisions t36h lc/app "{\"v1\": \"keep keep_patterns\", \"build-2\": \"keep keep_last\",
    \"main--idle-2d\": \"keep idle\", \"stale--idle-2d\": \"keep idle\", \"$(st sig_tag)\": \"keep follows_subject\"}"
  entry t36h lc/app main--idle-2d | jq -r .reason | tee /dev/stderr | grep -q 'last pulled' \
    || fail "the reason for main--idle-2d does not count from its last pull"
}

step_idle_run() {
  clock_set $((72 * HOUR))
  expect_eq "$(inventory_row lc/app stale--idle-2d | jq -r '"\(.pull_count) \(.last_pulled_at)"')" "0 null" \
    "pull_count and last_pulled_at of stale--idle-2d"
  preview t72h
  expect_decisions t72h lc/app "{\"v1\": \"keep keep_patterns\", \"build-2\": \"keep keep_last\",
    \"main--idle-2d\": \"keep idle\", \"stale--idle-2d\": \"delete idle\", \"$(st sig_tag)\": \"keep follows_subject\"}"
  B retention run
  expect_tags lc/app "[\"v1\",\"build-2\",\"main--idle-2d\",\"$(st sig_tag)\"]"
  expect_eq "$(manifest_code lc/app "$(st stale_manifest)")" 404 "GET /v2/lc/app/manifests/<stale's digest> after the run"
  expect_audit tag.delete lc/app:stale--idle-2d idle
  expect_audit manifest.delete "lc/app@$(st stale_manifest)" idle
  if grep -qF "lc/app:main--idle-2d" "$T/work/audit.out"; then fail "the audit log shows a deletion of main--idle-2d"; fi
  echo pull >> "$T/state/main_pulls"
  check_remote_manifest lc/app:main--idle-2d "$(st main_manifest)"
  touch "$T/state/idle_done"
}

# ================================================================== gc =====
step_gc_dry_run_predicts() {
  [[ -f $T/state/idle_done ]] || skip_here "the idle run did not happen above"
  # pr-1's manifest went 70 h ago (past the 24 h grace): its 2 links and 2 blobs
  # are collectable; stale's went just now.
  gc_json t72h-dry --dry-run
  expect_gc t72h-dry "dry_run=true manifests_removed=0 links_removed=2"
  [[ $(gc_field t72h-dry blobs_removed) == 2 ]] \
    || fail "berth gc --dry-run reports blobs_removed=$(gc_field t72h-dry blobs_removed), but the 2 blobs of pr-1" \
      "($(st pr_blobs)) are past the grace period and referenced only by the 2 links the dry run itself reports" \
      "as removed: a run removes them (step 5.2), so a dry run must count them"
  expect_gc t72h-dry "bytes_reclaimed=$(size_sum pr)"
}

step_gc_past_grace() {
  [[ -f $T/state/idle_done ]] || skip_here "the idle run did not happen above"
  gc_json t72h
  expect_gc t72h "dry_run=false manifests_removed=0 links_removed=2 blobs_removed=2 bytes_reclaimed=$(size_sum pr)"
  expect_gone "pr-1's blobs (unreferenced for 70 h)" pr
  expect_on_disk "stale's blobs (unreferenced for 0 h)" stale
  expect_on_disk "the blobs of the images that stay" v1 main sig
  # nothing else is past the grace period now
  gc_json t72h-again --dry-run
  expect_gc t72h-again "manifests_removed=0 links_removed=0 blobs_removed=0 signature_tags_removed=0"
}

step_gc_stale() {
  [[ -f $T/state/idle_done ]] || skip_here "the idle run did not happen above"
  clock_set $((97 * HOUR))
  gc_json t97h
  expect_gc t97h "manifests_removed=0 links_removed=2 blobs_removed=2 bytes_reclaimed=$(size_sum stale)"
  expect_gone "stale's blobs (unreferenced for 25 h)" stale
  local f n=0
  for f in "$T"/layout-multi/blobs/sha256/*; do
    [[ " $(st multi_index) $(st multi_amd64_manifest) $(st multi_arm64_manifest) " == *" sha256:$(basename "$f") "* ]] && continue
    on_disk "sha256:$(basename "$f")" || fail "blob $(basename "$f") of lc/multi:v1 is gone from the blob store"
    n=$((n + 1))
  done
  echo "lc/multi:v1: $n config and layer files present"
  expect_on_disk "the blobs of the images that stay" v1 main sig
}

step_copy_back() {
  SK copy --preserve-digests --src-tls-verify=false "docker://$REG/lc/app:v1" "oci:$T/out-v1:v1"
  compare_layouts "$T/layout-v1" "$T/out-v1" "$(st v1_manifest)"
  SK copy --all --preserve-digests --src-tls-verify=false "docker://$REG/lc/multi:v1" "oci:$T/out-multi:v1"
  compare_layouts "$T/layout-multi" "$T/out-multi" "$(st multi_index)"
  if [[ -f $T/state/podman_up ]]; then
    podman_pull lc/app:v1 v1
  else
    note "podman did not run above: lc/app:v1 was checked with skopeo only"
  fi
}

# ====================================================== delete + gc ====
step_delete_v1() {
  local code
  code=$(http_code DELETE "$URL/v2/lc/app/manifests/$(st v1_manifest)")
  expect_eq "$code" 202 "DELETE /v2/lc/app/manifests/<v1's digest>"
  expect_eq "$(manifest_code lc/app "$(st v1_manifest)")" 404 "GET /v2/lc/app/manifests/<v1's digest> after the DELETE"
  expect_eq "$(manifest_code lc/app v1)" 404 "GET /v2/lc/app/manifests/v1 after the DELETE"
  # its tags went with it; the signature tag waits for garbage collection
  expect_tags lc/app "[\"main--idle-2d\",\"$(st sig_tag)\"]"
  # v1's links and blobs restarted their grace period with the DELETE
  gc_json t97h-dry --dry-run
  expect_gc t97h-dry "links_removed=0 blobs_removed=0"
  expect_on_disk "v1's blobs (unreferenced for 0 h)" v1
}

step_gc_signature() {
  clock_set $((122 * HOUR))
  gc_json t122h
  # The signature's own blobs go in the same run: garbage that frees garbage
  # starts no new grace period.
  expect_gc t122h "signature_tags_removed=1 manifests_removed=1 links_removed=5 blobs_removed=5 bytes_reclaimed=$(($(size_sum v1) + $(size_sum sig)))"
  expect_tags lc/app '["main--idle-2d"]'
  expect_eq "$(manifest_code lc/app "$(st sig_manifest)")" 404 "GET /v2/lc/app/manifests/<the signature's digest>"
  expect_gone "v1's blobs (unreferenced for 25 h)" v1
  expect_gone "the signature's blobs (its manifest was garbage)" sig
  expect_audit tag.delete "lc/app:$(st sig_tag)" follows_subject
  expect_audit manifest.delete "lc/app@$(st sig_manifest)" follows_subject
  grep -E "[[:space:]]gc[[:space:]]+tag\.delete[[:space:]]+lc/app:$(st sig_tag)[[:space:]]" "$T/work/audit.out" >/dev/null \
    || fail "the audit line of the signature tag's deletion does not have the actor gc"
}

step_gc_signature_blobs() {
  clock_set $((147 * HOUR))
  gc_json t147h
  expect_gc t147h "signature_tags_removed=0 manifests_removed=0 links_removed=0 blobs_removed=0 bytes_reclaimed=0"
  expect_on_disk "main--idle-2d's blobs" main
}

# ============================================================== re-push ====
step_repush_v1() {
  local d
  for d in $(st v1_blobs); do
    expect_eq "$(http_code HEAD "$URL/v2/lc/app/blobs/$d")" 404 "HEAD /v2/lc/app/blobs/$d (collected) before the push"
  done
  push_layout v1 lc/app:v1
  check_remote_manifest lc/app:v1 "$(st v1_manifest)"
  for d in $(st v1_blobs); do
    expect_eq "$(http_code HEAD "$URL/v2/lc/app/blobs/$d")" 200 "HEAD /v2/lc/app/blobs/$d after the push"
    cmp "$(blob_path "$d")" "$T/layout-v1/blobs/sha256/${d#sha256:}" || fail "blob file $d differs from the pushed bytes"
  done
  rm -rf "$T/out-v1"
  SK copy --preserve-digests --src-tls-verify=false "docker://$REG/lc/app:v1" "oci:$T/out-v1:v1"
  compare_layouts "$T/layout-v1" "$T/out-v1" "$(st v1_manifest)"
}

step_repush_shared() {
  local d
  build_reusing rebuilt pr stale
  echo "rebuilt: $(st rebuilt_manifest) layers: $(st rebuilt_layers)"
  for d in $(st pr_layers) $(st stale_layers); do
    expect_eq "$(http_code HEAD "$URL/v2/lc/app/blobs/$d")" 404 "HEAD /v2/lc/app/blobs/$d (collected) before the push"
  done
  push_layout rebuilt lc/app:rebuilt
  check_remote_manifest lc/app:rebuilt "$(st rebuilt_manifest)"
  for d in $(st rebuilt_blobs); do
    cmp "$(blob_path "$d")" "$T/layout-rebuilt/blobs/sha256/${d#sha256:}" || fail "blob file $d differs from the pushed bytes"
  done
  SK copy --preserve-digests --src-tls-verify=false "docker://$REG/lc/app:rebuilt" "oci:$T/out-rebuilt:v1"
  compare_layouts "$T/layout-rebuilt" "$T/out-rebuilt" "$(st rebuilt_manifest)"
  if [[ -f $T/state/podman_up ]]; then podman_pull lc/app:rebuilt rebuilt; fi
}

# ================================================================ fsck =====
fsck_json() { # name [args]: berth fsck --json; prints its exit status
  local name=$1 rc=0
  shift
  timeout 60 "${BERTH_ENV[@]}" "$BERTH_BIN" fsck --json "$@" --config "$CFG" --data-dir "$DATA" \
    > "$T/work/fsck-$name.json" 2> "$T/work/fsck-$name.err" || rc=$?
  echo "berth fsck $* (exit $rc): $(cat "$T/work/fsck-$name.json") $(cat "$T/work/fsck-$name.err")" >&2
  echo "$rc"
}

step_fsck_clean() {
  local rc
  rc=$(fsck_json clean)
  expect_eq "$rc" 0 "exit status of berth fsck"
  expect_eq "$(jq -c '[.problems, .unrepaired]' "$T/work/fsck-clean.json")" '[[],0]' "problems and unrepaired in berth fsck --json"
  expect_eq "$(jq -r .files_checked "$T/work/fsck-clean.json")" "$(find "$DATA/blobs/sha256" -type f | wc -l)" \
    "files_checked of berth fsck vs the files in the blob store"
}

step_fsck_orphan() {
  local f d rc
  f=$T/work/stray
  head -c 1000 /dev/urandom > "$f"
  d=$(sha_of "$f")
  mkdir -p "$(dirname "$(blob_path "$d")")"
  cp "$f" "$(blob_path "$d")"
  rc=$(fsck_json orphan)
  [[ $rc != 0 ]] || fail "berth fsck exited 0 with a stray file in the blob store"
  expect_eq "$(jq -c '[.problems[] | {kind, digest, size, repaired}]' "$T/work/fsck-orphan.json")" \
    "[{\"kind\":\"orphan_file\",\"digest\":\"sha256:$d\",\"size\":1000,\"repaired\":false}]" "problems of berth fsck"
  expect_eq "$(jq -r .unrepaired "$T/work/fsck-orphan.json")" 1 "unrepaired of berth fsck"
  [[ -f $(blob_path "$d") ]] || fail "berth fsck without --repair removed the stray file"
  rc=$(fsck_json repair --repair)
  expect_eq "$rc" 0 "exit status of berth fsck --repair"
  expect_eq "$(jq -c '[.problems[] | {kind, digest, repaired}], .unrepaired' "$T/work/fsck-repair.json" | tr '\n' ' ')" \
    "[{\"kind\":\"orphan_file\",\"digest\":\"sha256:$d\",\"repaired\":true}] 0 " "report of berth fsck --repair"
  [[ ! -e $(blob_path "$d") ]] || fail "berth fsck --repair left the stray file $(blob_path "$d")"
  rc=$(fsck_json after)
  expect_eq "$rc" 0 "exit status of berth fsck after the repair"
  expect_eq "$(jq -c '.problems' "$T/work/fsck-after.json")" '[]' "problems of berth fsck after the repair"
}

# =========================================================== inventory =====
step_inventory_multi() {
  local row plats
  inventory "repository=lc/multi" | jq .
  expect_eq "$(jq '.images | length' "$T/work/inventory.json")" 1 "rows of GET /v1/images?repository=lc/multi"
  row=$(jq -c '.images[0]' "$T/work/inventory.json")
  expect_eq "$(jq -r '"\(.repository) \(.tag) \(.digest) \(.media_type) \(.provenance)"' <<<"$row")" \
    "lc/multi v1 $(st multi_index) $MT_INDEX pushed" "repository, tag, digest, media_type, provenance of lc/multi:v1"
  plats=$(jq -c '.platforms | sort' <<<"$row")
  [[ $plats == '["linux/amd64","linux/arm64/v8"]' || $plats == '["linux/amd64","linux/arm64"]' ]] \
    || fail "platforms of lc/multi:v1: expected linux/amd64 and linux/arm64(/v8), got $plats"
  # the index, its children and their distinct blobs: every file of the layout
  expect_eq "$(jq -r .total_size <<<"$row")" "$(cat "$T"/layout-multi/blobs/sha256/* | wc -c)" "total_size of lc/multi:v1"
  expect_eq "$(jq -r '"\(.lifecycle.action) \(.lifecycle.rule) \(.lifecycle.expires_at)"' <<<"$row")" \
    "keep keep_patterns null" "lifecycle of lc/multi:v1"
  [[ $(jq -r .pushed_at <<<"$row") =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]] || fail "pushed_at of lc/multi:v1 is not a time: $row"
  # nothing here arrived any other way than by a push
  expect_eq "$(inventory "repository=lc/multi&provenance=mirrored" | jq -c .images)" "[]" "GET /v1/images?provenance=mirrored"
}

step_inventory_app() {
  local all paged cursor page=0 q
  push_layout main lc/app:feature--ttl-2d
  push_layout main lc/app:nightly--idle-1w
  all=$(inventory "repository=lc/app&provenance=pushed" | jq -c '[.images[] | .tag]')
  echo "lc/app: $all"
  expect_eq "$(jq -c 'sort' <<<"$all")" "$(tags_of lc/app)" "tags in GET /v1/images?repository=lc/app vs tags/list"
  expect_eq "$(jq -r '.images[] | select(.tag == "main--idle-2d") | .pull_count' "$T/work/inventory.json")" \
    "$(wc -l < "$T/state/main_pulls")" "pull_count of main--idle-2d (the GETs of it above)"
  # the same rows one at a time, following next_cursor
  paged="[]"
  q="repository=lc/app&provenance=pushed&n=1"
  while :; do
    inventory "$q" > /dev/null
    expect_eq "$(jq '.images | length' "$T/work/inventory.json")" 1 "rows in a page of n=1"
    paged=$(jq -c --slurpfile p "$T/work/inventory.json" '. + [$p[0].images[0].tag]' <<<"$paged")
    cursor=$(jq -r '.next_cursor // empty' "$T/work/inventory.json")
    [[ -n $cursor ]] || break
    page=$((page + 1))
    [[ $page -lt 50 ]] || fail "more than 50 pages"
    q="repository=lc/app&provenance=pushed&n=1&cursor=$cursor"
  done
  expect_eq "$paged" "$all" "tags of the pages of n=1 vs one page"
}

step_inventory_expiring() {
  local now rfc secs got
  now=$(now_ms)
  rfc=$(rfc3339_of_ms $((now + 30 * DAY)))
  got=$(inventory "repository=lc/app&expiring_before=$rfc" | jq -c '[.images[] | "\(.tag) \(.lifecycle.rule)"] | sort')
  echo "expiring before $rfc: $got"
  expect_eq "$got" '["feature--ttl-2d ttl","main--idle-2d idle","nightly--idle-1w idle"]' "GET /v1/images?expiring_before=$rfc (RFC 3339)"
  jq -e '[.images[] | .lifecycle.expires_at != null] | all' "$T/work/inventory.json" >/dev/null \
    || fail "a row returned for expiring_before has no lifecycle.expires_at"
  secs=$(( (now + 3 * DAY) / 1000 ))
  got=$(inventory "repository=lc/app&expiring_before=$secs" | jq -c '[.images[] | .tag] | sort')
  echo "expiring before $secs (Unix seconds): $got"
  expect_eq "$got" '["feature--ttl-2d","main--idle-2d"]' "GET /v1/images?expiring_before=$secs (Unix seconds)"
  got=$(inventory "expiring_before=$secs" | jq -c '[.images[] | "\(.repository):\(.tag)"] | sort')
  expect_eq "$got" '["lc/app:feature--ttl-2d","lc/app:main--idle-2d"]' "GET /v1/images?expiring_before=$secs (all repositories)"
}

# ================================================================ steps =====
begin_client push
step 1.1 "build OCI layouts (v1: 2 layers; pr, main, stale, sig: 1 layer; index amd64+arm64)" step_layouts
step 1.2 "skopeo push lc/app:v1, build-1, build-2 (one image), digests preserved" step_push_v1
step 1.3 "skopeo push lc/app:pr-1--ttl-1h, main--idle-2d, stale--idle-2d (three images)" step_push_suffixed
step 1.4 "skopeo push a signature image to lc/app:sha256-<v1's hex>.sig" step_push_sig
step 1.5 "skopeo push the multi-arch index to lc/multi:v1 (--all)" step_push_multi
group
step 1.6 "push to lc/app:x--ttl-0h is refused (skopeo: manifest invalid); --ttl-400d: 400 MANIFEST_INVALID" step_invalid_suffix

begin_client podman
step 2.1 "podman starts with its own storage (vfs, --root/--runroot)" step_podman_start
if [[ $GROUP_BROKEN == 0 ]]; then
  step 2.2 "podman pulls lc/app:main--idle-2d by tag; /v1/images counts the pull" step_podman_pull_idle
fi

begin_client retention
step 3.1 "retention set 'lc/**' --keep-last 1 --keep-pattern 'v*'; preview --json explains every tag" step_policy_preview
step 3.2 "+2h: retention run deletes pr-1--ttl-1h (ttl) with its manifest, and build-1 (retention)" step_run_ttl
step 3.3 "berth audit shows the deletions with their rules (ttl, retention)" step_audit_ttl
step 3.4 "berth gc inside the grace period removes nothing; pr-1's blobs stay on disk" step_gc_in_grace

begin_client idle
step 4.1 "+36h: podman pulls main--idle-2d (again); preview counts its idle window from the pull" step_idle_pull
step 4.2 "+72h: retention run deletes stale--idle-2d (never pulled), keeps main--idle-2d (pulled)" step_idle_run

begin_client gc
step 5.1 "+72h: berth gc --dry-run --json predicts the run (2 links, 2 blobs of pr-1)" step_gc_dry_run_predicts
group
step 5.2 "+72h: berth gc reclaims pr-1's blobs (70 h unreferenced), not stale's (0 h)" step_gc_past_grace
step 5.3 "+97h: berth gc reclaims stale's blobs; every blob still used stays" step_gc_stale
group
step 5.4 "skopeo copies lc/app:v1 and lc/multi:v1 (--all) back byte-identical; podman pulls v1" step_copy_back

begin_client delete
step 6.1 "DELETE /v2/lc/app/manifests/<v1's digest> (curl): v1 and build-2 go, gc --dry-run: no blob" step_delete_v1
step 6.2 "+122h: berth gc removes the .sig tag with its manifest (audit: gc, follows_subject) and v1's blobs" step_gc_signature
step 6.3 "+147h: a further berth gc finds nothing more; blobs in use stay" step_gc_signature_blobs

begin_client repush
step 7.1 "skopeo push lc/app:v1 again after its blobs were collected; pulls back identical" step_repush_v1
group
step 7.2 "skopeo push a new image reusing collected layers (pr-1, stale); pulls back identical" step_repush_shared

begin_client fsck
step 8.1 "berth fsck --json: no problem, exit 0" step_fsck_clean
step 8.2 "a stray file in the blob store: fsck reports orphan_file (exit 1), --repair removes it" step_fsck_orphan

begin_client inventory
step 9.1 "GET /v1/images?repository=lc/multi: platforms, provenance pushed, total_size, lifecycle" step_inventory_multi
group
step 9.2 "GET /v1/images?repository=lc/app: one row per tag, pull counts, pages by next_cursor" step_inventory_app
step 9.3 "GET /v1/images?expiring_before= (RFC 3339, Unix seconds) returns only ttl/idle tags" step_inventory_expiring

# ============================================================== summary ====
finish group
