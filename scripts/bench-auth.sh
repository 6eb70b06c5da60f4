#!/usr/bin/env bash
# Manifest GET with token auth on versus off, measured the way the yardstick
# measures it (../shared/bench/bench.py test d: `wrk -t2 -c32 -d10s --latency`
# on GET /v2/<repo>/manifests/latest with an OCI Accept header), plus the
# bearer token that auth needs. bench.py cannot send credentials, so this
# script runs the same wrk command line itself; it also runs bench.py's own
# test d against the auth-off server as a cross-check of the baseline.
#
#   scripts/bench-auth.sh [--no-build] [--runs N] [--secs S]
#
# Two Berth processes over separate temp data dirs, one with auth.mode = none
# and one with auth.mode = token. Three kinds of runs, alternating so drift
# hits all alike:
#   off       auth off, no Authorization header
#   off+hdr   auth off, the same Authorization header sent (and ignored): the
#             cost of carrying a token (client and kernel), without checking it
#   on        auth on, with the token
# Nine runs of each by default. Results: bench-results/auth.txt and auth.json.
# Takes about 5 minutes.
# Env: BERTH_BIN (default target/release/berth).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT="$ROOT/bench-results"
BENCH_PY="$ROOT/../shared/bench/bench.py"
build=1 runs=9 secs=10
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --runs) runs=$2; shift ;;
    --secs) secs=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-auth: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"; fi
BIN=${BERTH_BIN:-$ROOT/target/release/berth}
[ "$build" = 0 ] || cargo build --release -p berth-server
[ -x "$BIN" ] || { echo "bench-auth: $BIN not found" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench-auth: wrk not found (apt-get install wrk)" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-auth.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
mkdir -p "$OUT"

OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
PASSWORD=bench-admin-password

# start NAME MODE -> sets URL_<NAME> and PID_<NAME>
start() {
  local name=$1 mode=$2 dir=$TMP/$1
  mkdir -p "$dir"
  printf '[auth]\nmode = "%s"\n' "$mode" >"$dir/berth.toml"
  if [ "$mode" = token ]; then
    echo "$PASSWORD" | "$BIN" user add admin --admin --config "$dir/berth.toml" --data-dir "$dir/data" 2>/dev/null
  fi
  RUST_LOG=warn,berth=info "$BIN" serve --config "$dir/berth.toml" --data-dir "$dir/data" \
    --listen 127.0.0.1:0 2>"$dir/log" &
  local pid=$!
  PIDS+=("$pid")
  local addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'listening on [0-9.:]*' "$dir/log" | head -n1 | cut -d' ' -f3 || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "bench-auth: $name did not start"; cat "$dir/log"; exit 1; }
  printf -v "URL_$name" 'http://%s' "$addr"
  printf -v "PID_$name" '%s' "$pid"
}

# push_small URL REPO [AUTH-HEADER...]: a 64 KiB layer, a config and a manifest tagged latest
push_small() {
  local url=$1 repo=$2; shift 2
  local h=("$@") layer=$TMP/layer config=$TMP/config manifest=$TMP/manifest
  head -c 65536 /dev/urandom >"$layer"
  printf '{"architecture":"amd64","os":"linux"}' >"$config"
  local ld cd
  ld=sha256:$(sha256sum "$layer" | cut -d' ' -f1)
  cd=sha256:$(sha256sum "$config" | cut -d' ' -f1)
  curl -fsS "${h[@]}" -X POST --data-binary @"$layer" -H 'Content-Type: application/octet-stream' \
    "$url/v2/$repo/blobs/uploads/?digest=$ld" -o /dev/null
  curl -fsS "${h[@]}" -X POST --data-binary @"$config" -H 'Content-Type: application/octet-stream' \
    "$url/v2/$repo/blobs/uploads/?digest=$cd" -o /dev/null
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":65536}]}' \
    "$OCI_MANIFEST" "$cd" "$(stat -c %s "$config")" "$ld" >"$manifest"
  curl -fsS "${h[@]}" -X PUT --data-binary @"$manifest" -H "Content-Type: $OCI_MANIFEST" \
    "$url/v2/$repo/manifests/latest" -o /dev/null
}

URL_off="" URL_on="" PID_off=""
start off none
start on token
repo=bench/small
push_small "$URL_off" "$repo"
TOKEN=$(curl -fsS -u "admin:$PASSWORD" \
  "$URL_on/v2/token?service=berth&scope=repository:$repo:pull,push" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
push_small "$URL_on" "$repo" -H "Authorization: Bearer $TOKEN"
# Both answer the same manifest; the token-less request to the auth-on server is refused.
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL_on/v2/$repo/manifests/latest")" = 401 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$URL_on/v2/$repo/manifests/latest")" = 200 ]

results=$TMP/results
: >"$results"
for i in $(seq "$runs"); do
  for mode in off off+hdr on; do
    url_var=URL_${mode%+hdr}
    args=(-t2 -c32 "-d${secs}s" --latency -H "Accept: $OCI_MANIFEST")
    [ "$mode" = off ] || args+=(-H "Authorization: Bearer $TOKEN")
    wrk "${args[@]}" "${!url_var}/v2/$repo/manifests/latest" >"$TMP/wrk-$i.txt"
    python3 - "$mode" "$i" "$TMP/wrk-$i.txt" >>"$results" <<'PY'
import json, re, sys
mode, run, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
text = open(path).read()
def ms(label):
    m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print(json.dumps({"mode": mode, "run": run, "rps": rps, "p50_ms": ms(50), "p99_ms": ms(99),
                  "non2xx": int(non2xx.group(1)) if non2xx else 0}))
PY
    tail -n1 "$results"
  done
done

# The yardstick's own test d on the auth-off server, as a cross-check of the baseline.
yardstick=""
if [ -f "$BENCH_PY" ]; then
  python3 "$BENCH_PY" --url "$URL_off" --pid "$PID_off" --tests d --runs 1 --out "$TMP/yardstick-d.json" \
    >"$TMP/yardstick-d.txt" 2>&1 || true
  yardstick=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["tests"]["manifest_get"]["rps_median"]))' \
    "$TMP/yardstick-d.json" 2>/dev/null || true)
fi

python3 - "$results" "$OUT/auth.json" "$yardstick" "$(git rev-parse --short HEAD)" <<'PY' | tee "$OUT/auth.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = {"commit": sys.argv[4], "runs": rows, "yardstick_d_auth_off_rps": sys.argv[3] or None}
print(f"manifest GET by tag, wrk -t2 -c32 --latency, commit {sys.argv[4]}")
for mode in ("off", "off+hdr", "on"):
    r = [x for x in rows if x["mode"] == mode]
    med = statistics.median(x["rps"] for x in r)
    p50 = statistics.median(x["p50_ms"] for x in r)
    p99 = statistics.median(x["p99_ms"] for x in r)
    out[mode] = {"rps_median": med, "p50_ms_median": p50, "p99_ms_median": p99,
                 "non2xx": sum(x["non2xx"] for x in r)}
    print(f"  auth {mode:7}: {med:8.0f} req/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  runs {[round(x['rps']) for x in r]}  non-2xx {out[mode]['non2xx']}")
ratio = out["on"]["rps_median"] / out["off"]["rps_median"]
out["on_over_off"] = round(ratio, 3)
print(f"  auth on / auth off: {ratio:.3f}")
carry = out["off+hdr"]["rps_median"] / out["off"]["rps_median"]
check = out["on"]["rps_median"] / out["off+hdr"]["rps_median"]
out["off_hdr_over_off"] = round(carry, 3)
out["on_over_off_hdr"] = round(check, 3)
print(f"  carrying the token (off+hdr / off): {carry:.3f}   checking it (on / off+hdr): {check:.3f}")
if sys.argv[3]:
    print(f"  bench.py test d against the auth-off server (cross-check): {sys.argv[3]} req/s")
json.dump(out, open(sys.argv[2], "w"), indent=2)
PY
