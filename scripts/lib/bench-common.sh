# Helpers shared by the benchmark scripts that time steps under /usr/bin/time -v
# and drive wrk with scripts/lib/bench-tags-list.lua (bench-lifecycle.sh,
# bench-gc.sh). Source it after setting OUT, the results directory. It also puts
# the Rust toolchain's bin/ on PATH, which a minimal environment may lack.
# shellcheck shell=bash

if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  case ":$PATH:" in
    *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
    *) export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;;
  esac
fi

# Prefixes each line of its input with the time of day, to the millisecond.
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%T.%3N)" "$line"; done; }
# Wall time of a step in seconds, from "Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02.34".
wall_s() {
  awk -F': ' '/Elapsed \(wall clock\)/ {
    n = split($2, p, ":"); s = 0
    for (i = 1; i <= n; i++) s = s * 60 + p[i]
    printf "%.2f", s
  }' "$OUT/$1.time"
}
# A field of wrk's RESULT line (written by the Lua script): wrk_field FILE FIELD.
wrk_field() { sed -n "s/^RESULT .*\\b$2=\\([0-9]*\\).*/\\1/p" "$OUT/$1"; }
# Microseconds on stdin to milliseconds.
us_to_ms() { awk '{printf "%.2f", $1 / 1000}'; }
