# shellcheck shell=bash
# A throwaway PostgreSQL server for tests: Debian's `postgresql` package (15
# on Debian 12), a fresh cluster in a temp dir, on a free port of 127.0.0.1.
#
#   source scripts/lib/postgres.sh
#   pg_test_install                 # apt-get install postgresql when initdb is missing (root)
#   pg_test_start                   # exports BERTH_TEST_POSTGRES_URL
#   trap pg_test_stop EXIT          # or call it in your own cleanup
#   BERTH_TEST_REQUIRE_SERVICES=1 cargo test -p berth-meta
#
# pg_test_start [PARENT]: the cluster lives in a new directory under PARENT
# (default: $TMPDIR or /tmp), which the `postgres` user must be able to
# enter. It sets PG_TEST_DIR, PG_TEST_PORT, PG_TEST_LOG (the server's log)
# and exports BERTH_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres.
# Authentication is `trust`, durability is off (fsync), and the socket is in
# PG_TEST_DIR: it is for tests only. As root the server runs as the `postgres`
# user (runuser); otherwise as the calling user.
#
# pg_test_stop: stops the server (fast shutdown) and removes PG_TEST_DIR;
# safe to call twice or when pg_test_start failed half-way.
#
# The functions return non-zero with a message on stderr instead of exiting.

PG_TEST_DIR=${PG_TEST_DIR:-}
PG_TEST_PORT=${PG_TEST_PORT:-}
PG_TEST_LOG=${PG_TEST_LOG:-}
PG_TEST_BIN=${PG_TEST_BIN:-}

pg_test_say() { echo "postgres.sh: $*" >&2; }

# Prints the bin directory of the newest installed server, if any.
pg_test_bindir() {
  local d best=
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/initdb && -x $d/pg_ctl ]] || continue
    if [[ -z $best ]] || [[ $(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n 1) == "$d" ]]; then
      best=$d
    fi
  done
  [[ -n $best ]] || return 1
  echo "$best"
}

pg_test_install() {
  if pg_test_bindir >/dev/null; then return 0; fi
  if [[ $(id -u) != 0 ]]; then
    pg_test_say "PostgreSQL is not installed and installing it needs root: apt-get install postgresql"
    return 1
  fi
  pg_test_say "installing Debian's postgresql package"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2 \
    || { pg_test_say "apt-get install postgresql failed"; return 1; }
  pg_test_bindir >/dev/null || { pg_test_say "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin"; return 1; }
}

# Runs a command as the cluster's owner.
pg_test_as_owner() {
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_test_free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  pg_test_say "no free port found"
  return 1
}

pg_test_start() {
  local parent=${1:-${TMPDIR:-/tmp}} attempt
  if [[ -n $PG_TEST_DIR ]]; then
    pg_test_say "a test server is already running in $PG_TEST_DIR"
    return 1
  fi
  PG_TEST_BIN=$(pg_test_bindir) || { pg_test_say "no PostgreSQL server installed (call pg_test_install first)"; return 1; }
  PG_TEST_DIR=$(mktemp -d "$parent/berth-pg.XXXXXX") || { pg_test_say "cannot create a directory under $parent"; return 1; }
  PG_TEST_LOG=$PG_TEST_DIR/server.log
  if [[ $(id -u) == 0 ]]; then
    chown postgres:postgres "$PG_TEST_DIR" || { pg_test_say "cannot hand $PG_TEST_DIR to the postgres user"; return 1; }
  fi
  # initdb refuses a directory it did not create if it is not empty; cwd must
  # be readable by the owner, or the tools complain about it.
  if ! (cd "$PG_TEST_DIR" && pg_test_as_owner "$PG_TEST_BIN/initdb" -D "$PG_TEST_DIR/data" \
    -U postgres -A trust -N -E UTF8 >"$PG_TEST_DIR/initdb.log" 2>&1); then
    pg_test_say "initdb failed:"
    tail -n 20 "$PG_TEST_DIR/initdb.log" >&2
    return 1
  fi
  # A port can be taken between choosing it and binding it: try a few.
  for attempt in 1 2 3; do
    PG_TEST_PORT=$(pg_test_free_port) || return 1
    # -l always: without it pg_ctl keeps a captured stdout open and hangs.
    if (cd "$PG_TEST_DIR" && pg_test_as_owner "$PG_TEST_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_LOG" \
      -o "-p $PG_TEST_PORT -k $PG_TEST_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      -w -t 30 start >/dev/null); then
      export BERTH_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_TEST_PORT/postgres"
      pg_test_say "PostgreSQL $("$PG_TEST_BIN/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$PG_TEST_PORT (log: $PG_TEST_LOG)"
      return 0
    fi
    pg_test_say "start on port $PG_TEST_PORT failed (attempt $attempt):"
    tail -n 5 "$PG_TEST_LOG" >&2 2>/dev/null || true
  done
  return 1
}

pg_test_stop() {
  [[ -n $PG_TEST_DIR ]] || return 0
  if [[ -f $PG_TEST_DIR/data/postmaster.pid ]]; then
    (cd "$PG_TEST_DIR" && pg_test_as_owner "$PG_TEST_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w -t 30 stop >/dev/null) \
      || pg_test_say "pg_ctl stop failed (log: $PG_TEST_LOG)"
  fi
  rm -rf "$PG_TEST_DIR"
  PG_TEST_DIR='' PG_TEST_PORT='' PG_TEST_LOG=''
  unset BERTH_TEST_POSTGRES_URL
}
