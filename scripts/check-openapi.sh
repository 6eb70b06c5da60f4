#!/usr/bin/env bash
# The admin API against its own OpenAPI document, with schemathesis:
#
#   scripts/check-openapi.sh [--max-examples N] [--keep]
#
# Starts target/debug/berth (BERTH_BIN overrides; built when missing) on an
# ephemeral loopback port with a temp data dir and auth.mode = "token", adds
# a local administrator with the berth CLI, and runs schemathesis against
# GET /api/v1/openapi.json with that administrator's Basic credentials. The
# checks: no 5xx (not_a_server_error), and every answer has a documented
# status, content type and body schema. Each operation gets at most N
# generated requests (default 40), so the run takes a few minutes.
#
# schemathesis comes from PyPI into a venv under target/tools, pinned in
# scripts/lib/schemathesis-venv.sh and installed once (scripts/install-deps.sh
# does it too); it needs python3 with venv (python3-venv on Debian).
# Exits non-zero when a check fails or the set-up does; prints
# "openapi: N passed, N failed" last.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MAX_EXAMPLES=40
KEEP=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --max-examples) MAX_EXAMPLES=$2; shift 2 ;;
    --max-examples=*) MAX_EXAMPLES=${1#*=}; shift ;;
    -k|--keep) KEEP=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "openapi: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BERTH_BIN=${BERTH_BIN:-$TARGET_DIR/debug/berth}
# shellcheck source=lib/schemathesis-venv.sh source-path=SCRIPTDIR
source "$ROOT/scripts/lib/schemathesis-venv.sh"

fail_setup() {
  echo "openapi: ERROR: $*" >&2
  echo "openapi: 0 passed, 1 failed"
  exit 1
}

if [[ ! -x $BERTH_BIN ]]; then
  echo "openapi: building berth (debug)"
  cargo build -p berth-server --bin berth || fail_setup "cargo build failed"
fi

schemathesis_venv_install || fail_setup "could not install schemathesis"

T=$(mktemp -d "${TMPDIR:-/tmp}/berth-openapi.XXXXXX")
BERTH_PID=""
cleanup() {
  if [[ -n $BERTH_PID ]]; then
    kill "$BERTH_PID" 2>/dev/null || true
    wait "$BERTH_PID" 2>/dev/null || true
  fi
  if [[ $KEEP == 1 ]]; then echo "openapi: kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

DATA=$T/data
CFG=$T/berth.toml
mkdir -p "$DATA"
# The login limit is high: schemathesis logs in with every request.
cat > "$CFG" <<EOF
[auth]
mode = "token"

[auth.login_limit]
failures = 100000
window_secs = 60
EOF
# Berth reads BERTH_* and RUST_LOG as configuration: the caller's stay out.
BERTH_ENV=(env -u RUST_LOG)
while read -r v; do BERTH_ENV+=(-u "$v"); done < <(compgen -e | grep '^BERTH_' || true)

ADMIN=openapi-admin
ADMIN_PW="pw-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$ADMIN_PW" | "${BERTH_ENV[@]}" "$BERTH_BIN" user add "$ADMIN" --admin --config "$CFG" --data-dir "$DATA" \
  > "$T/user-add.log" 2>&1 || { cat "$T/user-add.log" >&2; fail_setup "berth user add failed"; }

"${BERTH_ENV[@]}" "$BERTH_BIN" serve --config "$CFG" --listen 127.0.0.1:0 --data-dir "$DATA" \
  > "$T/berth.log" 2>&1 < /dev/null &
BERTH_PID=$!
ADDR=""
for ((i = 0; i < 300; i++)); do
  ADDR=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$T/berth.log" | head -n 1 || true)
  [[ -n $ADDR ]] && break
  kill -0 "$BERTH_PID" 2>/dev/null || break
  sleep 0.1
done
[[ -n $ADDR ]] || { tail -n 40 "$T/berth.log" >&2; fail_setup "berth did not start"; }
URL=http://${ADDR#listening on }
echo "openapi: berth at $URL"

curl -fsS -o "$T/openapi.json" "$URL/api/v1/openapi.json" || fail_setup "GET /api/v1/openapi.json failed"

# Positive and negative examples (a negative one must be refused with a
# 4xx, not a 5xx). Retention runs and garbage collection work on an empty
# registry here; that is all they get to touch. schemathesis fills a path's
# {name} with the user it logs in as, so the operations that can lock the
# administrator out (disable, a new password) run last, on their own.
LOCKOUT='^/api/v1/users/\{name\}/(disable|password)$'
st() { # in $T: schemathesis keeps state in ./.schemathesis
  (cd "$T" && "$SCHEMATHESIS" run "$T/openapi.json" \
    --url "$URL" \
    --auth "$ADMIN:$ADMIN_PW" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --phases examples,coverage,fuzzing \
    --mode all \
    --seed 1 \
    --generation-database none \
    --no-color \
    "$@")
}
rc=0
st --exclude-path-regex "$LOCKOUT" --report junit --report-junit-path "$T/report/main.xml" || rc=$?
st --include-path-regex "$LOCKOUT" --report junit --report-junit-path "$T/report/lockout.xml" || rc=$?

if grep -qE 'panicked|internal error' "$T/berth.log"; then
  echo "openapi: the server logged a panic or an internal error:" >&2
  grep -E 'panicked|internal error' "$T/berth.log" | head -n 20 >&2
  rc=1
fi

if [[ $rc == 0 ]]; then
  echo "openapi: 1 passed, 0 failed"
else
  echo "openapi: schemathesis exit $rc; server log: $T/berth.log (--keep keeps it)" >&2
  echo "openapi: 0 passed, 1 failed"
fi
exit "$rc"
