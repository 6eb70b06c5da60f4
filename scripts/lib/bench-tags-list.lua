-- wrk script for scripts/bench-lifecycle.sh: GET /v2/bench/rNNNN/tags/list?n=100
-- on a random repository of the seeded registry, each connection pausing
-- BENCH_DELAY_MS between its requests (a paced load, not a saturating one).
-- Prints one machine-readable line at the end:
--   RESULT requests=N duration_us=N errors=N non2xx=N p50_us=N p90_us=N p99_us=N p999_us=N max_us=N mean_us=N
-- Env: BENCH_REPOS (default 1000), BENCH_DELAY_MS (default 2).

local repos = tonumber(os.getenv("BENCH_REPOS") or "1000")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "2")
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  -- Each wrk thread has its own Lua state: seed them apart.
  math.randomseed(os.time() * 7919 + (id or 0))
end

function request()
  local path = string.format("/v2/bench/r%04d/tags/list?n=100", math.random(0, repos - 1))
  return wrk.format("GET", path)
end

function delay()
  return pause
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d errors=%d non2xx=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
