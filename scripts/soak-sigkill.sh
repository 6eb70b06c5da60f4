#!/usr/bin/env bash
# The SIGKILL soak (not part of scripts/test): `berth serve` is killed with
# SIGKILL at random moments while four clients push, restarted at once on the
# same data and port each time, and at the end every manifest and blob it
# acknowledged (a 201 received) is fetched and compared byte for byte, and
# `berth fsck --verify` re-hashes the whole store.
#
#   scripts/soak-sigkill.sh [--backend embedded|scaleout] [--kills N] [--pushers N]
#                           [--seed N] [--min-delay S] [--max-delay S] [--no-build] [--keep]
#
#   --backend    embedded (default): blobs in the data dir, SQLite; scaleout: a
#                throwaway PostgreSQL (scripts/lib/postgres.sh) and s3s-fs
#                (scripts/lib/s3.sh) started here and stopped at the end
#   --kills      how many times berth is killed (default 100)
#   --pushers    concurrent pushing clients (default 4)
#   --seed       the seed of the kill delays and the pushers' choices (default: random, printed)
#   --min-delay, --max-delay
#                each kill comes this many seconds (uniformly random) after the
#                restarted server answered (default 0.05 and 3.0)
#   --no-build   use target/release/berth as it is (default: cargo build --release -p berth-server)
#   --keep       keep the temp dir (data, config, berth's log) for a look afterwards
#
# BERTH_BIN overrides the binary (then nothing is built).
#
# What it kills is berth only: PostgreSQL and the S3 server keep running (and
# the test cluster runs with fsync off), so this is a crash of the registry
# process, not of the machine. The pushers (scripts/lib/soak_sigkill.py) push
# images of one to three blobs of 256 B to 256 KiB, each blob in one POST or in
# 16-96 KiB chunks, then the manifest under a tag of its own; through an outage
# they send a request again, and continue a chunked upload from the offset the
# server reports for the session. Garbage collection, retention and tag expiry
# are off: nothing may go.
#
# The last lines give the counts (kills, acknowledged, verified, lost, fsck)
# and PASSED or FAILED, which is also the exit status. docs/reliability.md
# records runs on both backends.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

BACKEND=embedded
BUILD=1
KEEP=0
DRIVER_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --backend) BACKEND=${2:?--backend needs a value}; shift 2 ;;
    --kills|--pushers|--seed|--min-delay|--max-delay)
      [[ $# -ge 2 ]] || { echo "soak: $1 needs a value" >&2; exit 2; }
      DRIVER_ARGS+=("$1" "$2"); shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $BACKEND in
  embedded|scaleout) ;;
  *) echo "soak: --backend is embedded or scaleout, not $BACKEND" >&2; exit 2 ;;
esac

if [[ -n ${BERTH_BIN:-} ]]; then
  BIN=$BERTH_BIN
else
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/berth
  if [[ $BUILD == 1 ]]; then
    cargo build --release -p berth-server
  fi
fi
[[ -x $BIN ]] || { echo "soak: $BIN is not an executable (build it, or set BERTH_BIN)" >&2; exit 1; }
command -v python3 >/dev/null 2>&1 || { echo "soak: python3 not found" >&2; exit 1; }

T=$(mktemp -d "${TMPDIR:-/tmp}/berth-soak.XXXXXX")
# shellcheck source=lib/postgres.sh source-path=SCRIPTDIR
source "$ROOT/scripts/lib/postgres.sh"
cleanup() {
  local rc=$?
  set +e
  pg_test_stop
  if [[ $KEEP == 1 ]]; then
    echo "soak: kept $T" >&2
  else
    rm -rf "$T"
  fi
  exit "$rc"
}
trap cleanup EXIT
mkdir -p "$T/data"

# Only what this script sets reaches berth (BERTH_TOOLS_DIR is where s3.sh
# finds s3s-fs).
while IFS= read -r name; do
  [[ $name == BERTH_TOOLS_DIR ]] || unset "$name"
done < <(env | sed -n 's/^\(BERTH_[A-Za-z0-9_]*\)=.*/\1/p')

cat > "$T/berth.toml" <<'EOF'
# Nothing may be deleted during the soak.
[gc]
interval_secs = 0
[retention]
interval_secs = 0
[lifecycle]
expiry_interval_secs = 0
EOF

if [[ $BACKEND == scaleout ]]; then
  # shellcheck source=lib/s3.sh source-path=SCRIPTDIR
  source "$ROOT/scripts/lib/s3.sh"   # its stop runs at exit, before cleanup
  pg_test_start || { echo "soak: could not start PostgreSQL" >&2; exit 1; }
  s3_start || { echo "soak: could not start s3s-fs" >&2; exit 1; }
  export BERTH_STORAGE__BACKEND=s3
  export BERTH_STORAGE__S3__ENDPOINT=$BERTH_TEST_S3_ENDPOINT
  export BERTH_STORAGE__S3__BUCKET=$BERTH_TEST_S3_BUCKET
  export BERTH_STORAGE__S3__REGION=$BERTH_TEST_S3_REGION
  export BERTH_STORAGE__S3__ACCESS_KEY_ID=$BERTH_TEST_S3_ACCESS_KEY
  export BERTH_STORAGE__S3__SECRET_ACCESS_KEY=$BERTH_TEST_S3_SECRET_KEY
  export BERTH_STORAGE__S3__ALLOW_HTTP=true
  export BERTH_STORAGE__S3__PREFIX=soak
  export BERTH_META__BACKEND=postgres
  export BERTH_META__URL=$BERTH_TEST_POSTGRES_URL
fi
export RUST_LOG=info

echo "soak: $BIN ($BACKEND) over $T"
python3 "$ROOT/scripts/lib/soak_sigkill.py" --berth "$BIN" --data-dir "$T/data" --config "$T/berth.toml" \
  --log "$T/berth.log" ${DRIVER_ARGS[@]+"${DRIVER_ARGS[@]}"}
