-- wrk script for scripts/bench-proxy.py: GETs the paths of a list file in
-- order, round and round, each wrk thread starting at its own place. A line is
-- "M <path>" (a manifest: sent with an OCI manifest Accept header) or
-- "B <path>" (a blob). Counts answers that are not 200 or whose body length
-- differs from the list's third field, when it has one.
-- Prints one machine-readable line at the end:
--   RESULT requests=N duration_us=N errors=N non2xx=N p50_us=N p99_us=N
-- Env: BENCH_PULL_LIST (the list file).

local list_file = os.getenv("BENCH_PULL_LIST")
local threads = {}

local function load()
  local paths = {}
  for line in io.lines(list_file) do
    local kind, path = line:match("^(%a) (%S+)")
    if kind then
      local headers = {}
      if kind == "M" then
        headers["Accept"] = "application/vnd.oci.image.manifest.v1+json"
      end
      paths[#paths + 1] = wrk.format("GET", path, headers)
    end
  end
  return paths
end

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("id", #threads)
end

function init(args)
  requests = load()
  -- Threads spread over the list, so they do not ask for the same thing at once.
  pos = math.floor((id - 1) * #requests / 2) % #requests
end

function request()
  pos = pos % #requests + 1
  return requests[pos]
end

function done(summary, latency, requests)
  local e = summary.errors
  print(string.format("RESULT requests=%d duration_us=%d errors=%d non2xx=%d p50_us=%d p99_us=%d",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
