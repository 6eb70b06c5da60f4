# shellcheck shell=bash
# An S3 server for the tests: s3s-fs (the s3s project's S3 server over a
# directory) on 127.0.0.1, so that `cargo test` runs the S3 blob store's tests
# (crates/storage/src/s3.rs) against real S3 requests.
#
# Source it from the main shell (not from a $(...) or a pipeline: the
# functions set variables and start a child process), then:
#
#   s3_start    installs s3s-fs when missing (s3_install), starts it on a free
#               port over a new temp dir with the bucket in it, waits until it
#               answers, exports BERTH_TEST_S3_ENDPOINT, _BUCKET, _ACCESS_KEY,
#               _SECRET_KEY and _REGION, and stops it when the shell exits.
#   s3_stop     stops it now and removes its temp dir (again at exit: no-op).
#   s3_install  only the install: s3s-fs 0.14.1 (later versions need a newer
#               compiler) under target/tools of this repository, or under
#               BERTH_TOOLS_DIR; built once, about 2 minutes, then reused.
#
# Both return non-zero with a message on stderr when something fails. Needs
# cargo and curl. Works with and without set -euo pipefail. s3_start chains
# its stop in front of the EXIT trap already set; a script that sets its own
# EXIT trap afterwards must call s3_stop from it.

S3_LIB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
S3S_FS_VERSION=0.14.1
S3_PID=""
S3_DIR=""
s3__rc=0   # the exit status, kept by the EXIT trap for the earlier trap

s3__say() { printf 's3: %s\n' "$*" >&2; }

# s3_install: sets S3S_FS to the s3s-fs binary, installing it when the tools
# dir does not hold this version yet.
s3_install() {
  local root=${BERTH_TOOLS_DIR:-$S3_LIB_ROOT/target/tools}
  S3S_FS=$root/bin/s3s-fs
  # cargo records what it installed there; the same version needs no network.
  if [[ -x $S3S_FS ]] && grep -qs "^\"s3s-fs $S3S_FS_VERSION " "$root/.crates.toml"; then
    return 0
  fi
  command -v cargo >/dev/null 2>&1 || { s3__say "cargo not found on PATH: cannot install s3s-fs"; return 1; }
  s3__say "installing s3s-fs $S3S_FS_VERSION into $root (once; about 2 minutes)"
  if ! cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$root" >&2; then
    s3__say "cargo install s3s-fs@$S3S_FS_VERSION failed"
    return 1
  fi
  [[ -x $S3S_FS ]] || { s3__say "cargo install finished but $S3S_FS is missing"; return 1; }
}

s3__free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  s3__say "no free port found"
  return 1
}

# s3__wait PORT: succeeds once an HTTP server answers on PORT, fails when
# s3s-fs exits first (the port was taken after all) or after 10 s.
s3__wait() {
  local port=$1 i code
  for ((i = 0; i < 100; i++)); do
    kill -0 "$S3_PID" 2>/dev/null || return 1
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/" || true)
    [[ -n $code && $code != 000 ]] && return 0
    sleep 0.1
  done
  return 1
}

s3_start() {
  local access_key=berth-test secret_key=berth-test-secret bucket=berth-test port attempt prev
  if [[ -n $S3_PID ]]; then s3__say "s3s-fs already runs (pid $S3_PID)"; return 0; fi
  command -v curl >/dev/null 2>&1 || { s3__say "curl not found on PATH"; return 1; }
  s3_install || return 1
  S3_DIR=$(mktemp -d "${TMPDIR:-/tmp}/berth-s3.XXXXXX") || return 1
  # A bucket is a directory in s3s-fs's root.
  mkdir -p "$S3_DIR/data/$bucket"

  # The EXIT trap so far, as the command text it runs (trap -p quotes it).
  prev=$(trap -p EXIT)
  prev=${prev#trap -- }
  prev=${prev% EXIT}
  [[ -z $prev ]] || eval "prev=$prev"
  # At exit: stop s3s-fs, then hand the exit status to the earlier trap
  # (set +e there: the shell is leaving anyway, and `(exit N)` must not end
  # the trap before the earlier one ran).
  # shellcheck disable=SC2064  # $prev is expanded now, on purpose
  trap "s3__rc=\$?; set +e; s3_stop; (exit \$s3__rc); $prev" EXIT

  # Another process may take the free port before s3s-fs binds it: try again.
  for attempt in 1 2 3 4 5; do
    port=$(s3__free_port) || return 1
    "$S3S_FS" --host 127.0.0.1 --port "$port" --access-key "$access_key" --secret-key "$secret_key" \
      "$S3_DIR/data" > "$S3_DIR/s3s-fs.log" 2>&1 < /dev/null &
    S3_PID=$!
    if s3__wait "$port"; then
      export BERTH_TEST_S3_ENDPOINT=http://127.0.0.1:$port
      export BERTH_TEST_S3_BUCKET=$bucket
      export BERTH_TEST_S3_ACCESS_KEY=$access_key
      export BERTH_TEST_S3_SECRET_KEY=$secret_key
      export BERTH_TEST_S3_REGION=us-east-1
      s3__say "s3s-fs $S3S_FS_VERSION (pid $S3_PID) serves bucket $bucket at $BERTH_TEST_S3_ENDPOINT"
      return 0
    fi
    s3__say "s3s-fs did not answer on port $port (attempt $attempt); its log:"
    sed 's/^/     | /' "$S3_DIR/s3s-fs.log" | tail -n 20 >&2
    s3__stop_pid
  done
  s3__say "could not start s3s-fs"
  return 1
}

s3__stop_pid() {
  local i
  [[ -n $S3_PID ]] || return 0
  if kill -0 "$S3_PID" 2>/dev/null; then
    kill -TERM "$S3_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$S3_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$S3_PID" 2>/dev/null && kill -KILL "$S3_PID" 2>/dev/null
  fi
  wait "$S3_PID" 2>/dev/null || true
  S3_PID=""
}

s3_stop() {
  s3__stop_pid
  if [[ -n $S3_DIR ]]; then
    rm -rf "$S3_DIR"
    S3_DIR=""
  fi
  unset BERTH_TEST_S3_ENDPOINT BERTH_TEST_S3_BUCKET BERTH_TEST_S3_ACCESS_KEY BERTH_TEST_S3_SECRET_KEY \
    BERTH_TEST_S3_REGION
}
