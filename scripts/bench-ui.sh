#!/usr/bin/env bash
# The web UI on a big registry (issue 20): 1,000 repositories and about 100,000
# tags, one repository of them holding 10,000, seeded by berth-bench-seed; wrk
# measures how long the server takes to render each page. A benchmark, not a
# test: neither `cargo test` nor CI runs it.
#
#   scripts/bench-ui.sh [--no-build] [--seconds N] [--connections N]
#
# Pages (auth.mode = "none", so everything is visible, the most work per page):
#   home          /ui/
#   list          /ui/repositories                      (the first 50 by name)
#   list-next     /ui/repositories?after=bench/r0500    (a page in the middle)
#   search        /ui/repositories?q=r09                 (substring search)
#   repo-10k      /ui/r/bench/r0000                     (the newest 50 of 10,000 tags)
#   repo-10k-deep /ui/r/bench/r0000?after_ms=..&after_tag=..  (page ~100)
#   repo-small    /ui/r/bench/r0500                     (90 tags)
#   manifest      /ui/r/bench/r0000/-/manifest/<digest>
# Then the bytes of each page's first load: the HTML, the stylesheet and the script.
# Results: bench-results/ui/ (git-ignored); the summary is printed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=1 SECONDS_EACH=10 CONNECTIONS=4
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) BUILD=0 ;;
    --seconds) SECONDS_EACH=$2; shift ;;
    --connections) CONNECTIONS=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then cargo build --release -q -p berth-server -p berth-bench-seed; fi
OUT=$ROOT/bench-results/ui
mkdir -p "$OUT"
WORK=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/berth-bench-ui.XXXXXX")
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
cp target/release/berth target/release/berth-bench-seed "$WORK/"

echo "seeding 1,000 repositories (bench/r0000 with 10,000 tags, the others 90 each)"
"$WORK/berth-bench-seed" --data-dir "$WORK/data" --repos 1000 --tags 90 --first-repo-tags 10000 | tee "$OUT/seed.out"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
BERTH_LISTEN=127.0.0.1:$PORT BERTH_DATA_DIR=$WORK/data BERTH_LOG__FORMAT=json BERTH_LOG__LEVEL=warn \
  BERTH_GC__INTERVAL_SECS=0 "$WORK/berth" serve >"$OUT/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -fs "$BASE/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

# A tag about 5,000 deep in push order, for the deep page's cursor, and a digest.
deep=$(curl -fs "$BASE/ui/r/bench/r0000" | grep -o 'after_ms=[0-9]*&amp;after_tag=[a-z0-9]*' | head -1 | sed 's/&amp;/\&/')
for _ in $(seq 99); do
  next=$(curl -fs "$BASE/ui/r/bench/r0000?$deep" | grep -o 'after_ms=[0-9]*&amp;after_tag=[a-z0-9]*' | head -1 | sed 's/&amp;/\&/')
  [ -n "$next" ] || break
  deep=$next
done
digest=$(curl -fs "$BASE/v2/bench/r0000/manifests/t000000" -H 'Accept: application/vnd.oci.image.manifest.v1+json' -o /dev/null -D - \
  | tr -d '\r' | sed -n 's/^docker-content-digest: //Ip')

pages=(
  "home /ui/"
  "list /ui/repositories"
  "list-next /ui/repositories?after=bench/r0500"
  "search /ui/repositories?q=r09"
  "repo-10k /ui/r/bench/r0000"
  "repo-10k-deep /ui/r/bench/r0000?$deep"
  "repo-small /ui/r/bench/r0500"
  "manifest /ui/r/bench/r0000/-/manifest/$digest"
)
css=$(curl -fs "$BASE/ui/" | grep -o '/ui/static/[^"]*\.css')
js=$(curl -fs "$BASE/ui/" | grep -o '/ui/static/[^"]*\.js')
assets=$(( $(curl -fs "$BASE$css" | wc -c) + $(curl -fs "$BASE$js" | wc -c) ))
printf '\n%-14s %9s %9s %9s %9s %10s %10s\n' page req/s p50_ms p90_ms p99_ms html_B first_load_B | tee "$OUT/summary.txt"
for entry in "${pages[@]}"; do
  name=${entry%% *} path=${entry#* }
  status=$(curl -s -o "$OUT/$name.html" -w '%{http_code}' "$BASE$path")
  [ "$status" = 200 ] || { echo "$name: $path answered $status" >&2; exit 1; }
  html=$(wc -c < "$OUT/$name.html")
  wrk -t"$(( CONNECTIONS < 2 ? 1 : 2 ))" -c"$CONNECTIONS" -d"${SECONDS_EACH}s" --latency "$BASE$path" > "$OUT/$name.wrk"
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$name.wrk")
  ms() { awk -v p="$1" '$1 == p { v=$2; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 } printf "%.2f", v }' "$OUT/$name.wrk"; }
  printf '%-14s %9s %9s %9s %9s %10s %10s\n' "$name" "$rps" "$(ms 50%)" "$(ms 90%)" "$(ms 99%)" "$html" $((html + assets)) | tee -a "$OUT/summary.txt"
done
echo "(wrk: up to 2 threads, $CONNECTIONS connections, ${SECONDS_EACH}s per page; first load = HTML + stylesheet + script, uncompressed)"
