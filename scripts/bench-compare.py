#!/usr/bin/env python3
"""Compare two bench.py result files as a markdown table (stdlib only).

    scripts/bench-compare.py [BERTH.json [REFERENCE.json]] [--openssl FILE]

Defaults: bench-results/berth.json and bench-results/reference.json of this repository.
The ratio column is oriented so that > 1 means Berth is better: berth/ref for
throughput and efficiency, ref/berth for latency, time and memory.
Rows marked "info" are context (the client ceiling, correctness counts) and
get no ratio.
"""
import argparse
import json
import math
import os
import re
import statistics
import sys

HIGHER, LOWER, INFO = "higher", "lower", "info"


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def run_median(tests, test, key):
    """Median over a test's runs of one per-run field (e.g. MB per server CPU-second)."""
    runs = get(tests, test, "runs") or []
    xs = [r[key] for r in runs if isinstance(r, dict) and isinstance(r.get(key), (int, float))]
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else None


def s_to_ms(x):
    return None if x is None else x * 1e3


# (section, label, unit, better, getter(tests) -> number or None)
METRICS = [
    ("h", "startup: exec to first 200 on /v2/", "ms", LOWER, lambda t: get(t, "startup", "median_ms")),
    ("cal", "client ceiling: curl PUT to a null server", "MB/s", INFO,
     lambda t: get(t, "cal_client_ceiling", "put", "mbps_median")),
    ("cal", "client ceiling: curl GET from a null server", "MB/s", INFO,
     lambda t: get(t, "cal_client_ceiling", "get", "mbps_median")),
    ("a", "monolithic push", "MB/s", HIGHER, lambda t: get(t, "mono_push", "mbps_median")),
    ("a", "monolithic push: MB per server CPU-second", "MB/cpu-s", HIGHER,
     lambda t: run_median(t, "mono_push", "mb_per_server_cpu_s")),
    ("a", "monolithic push: peak server RSS", "MiB", LOWER,
     lambda t: run_median(t, "mono_push", "server_peak_rss_mib")),
    ("b", "chunked push", "MB/s", HIGHER, lambda t: get(t, "chunked_push", "mbps_median")),
    ("b", "chunked push: MB per server CPU-second", "MB/cpu-s", HIGHER,
     lambda t: run_median(t, "chunked_push", "mb_per_server_cpu_s")),
    ("b", "chunked push: peak server RSS", "MiB", LOWER,
     lambda t: run_median(t, "chunked_push", "server_peak_rss_mib")),
    ("c", "blob pull", "MB/s", HIGHER, lambda t: get(t, "blob_pull", "mbps_median")),
    ("c", "blob pull: MB per server CPU-second", "MB/cpu-s", HIGHER,
     lambda t: run_median(t, "blob_pull", "mb_per_server_cpu_s")),
    ("d", "manifest GET by tag", "req/s", HIGHER, lambda t: get(t, "manifest_get", "rps_median")),
    ("d", "manifest GET: p50 latency", "ms", LOWER, lambda t: get(t, "manifest_get", "p50_ms")),
    ("d", "manifest GET: p99 latency", "ms", LOWER, lambda t: get(t, "manifest_get", "p99_ms")),
    ("d", "manifest GET: requests per server CPU-second", "req/cpu-s", HIGHER,
     lambda t: run_median(t, "manifest_get", "req_per_server_cpu_s")),
    ("d", "manifest GET: non-2xx responses", "count", INFO,
     lambda t: run_median(t, "manifest_get", "non2xx")),
    ("e", "tag write rate (PUT manifest)", "tags/s", HIGHER, lambda t: get(t, "tags", "tag_put_per_s")),
    ("e", "tag write: tags per server CPU-second", "tags/cpu-s", HIGHER,
     lambda t: get(t, "tags", "tags_per_server_cpu_s")),
    ("e", "tag write: p50 latency", "ms", LOWER, lambda t: get(t, "tags", "put_p50_ms")),
    ("e", "tag write: p99 latency", "ms", LOWER, lambda t: get(t, "tags", "put_p99_ms")),
    ("e", "tags/list?n=100: p50 latency", "ms", LOWER, lambda t: get(t, "tags", "list_n100_p50_ms")),
    ("e", "tags/list?n=100: p99 latency", "ms", LOWER, lambda t: get(t, "tags", "list_n100_p99_ms")),
    ("e", "walk all tag pages (n=100) via Link", "ms", LOWER,
     lambda t: s_to_ms(get(t, "tags", "paginate_all_s"))),
    ("e", "full tags/list: p50 latency", "ms", LOWER, lambda t: get(t, "tags", "list_full_p50_ms")),
    ("e", "full tags/list: p99 latency", "ms", LOWER, lambda t: get(t, "tags", "list_full_p99_ms")),
    ("e", "tags pushed", "count", INFO, lambda t: get(t, "tags", "tags")),
    ("e", "tags returned by ?n=100", "count", INFO, lambda t: get(t, "tags", "list_n100_returned")),
    ("e", "tags seen walking all pages", "count", INFO, lambda t: get(t, "tags", "paginate_tags")),
    ("e", "tags in the full list", "count", INFO, lambda t: get(t, "tags", "list_full_count")),
    ("f", "concurrent pushes: aggregate", "MB/s", HIGHER, lambda t: get(t, "concurrent_push", "aggregate_mbps")),
    ("f", "concurrent pushes: MB per server CPU-second", "MB/cpu-s", HIGHER,
     lambda t: get(t, "concurrent_push", "mb_per_server_cpu_s")),
    ("f", "concurrent pushes: median push time", "s", LOWER,
     lambda t: get(t, "concurrent_push", "per_push_s_median")),
    ("f", "concurrent pushes: slowest push time", "s", LOWER,
     lambda t: get(t, "concurrent_push", "per_push_s_max")),
    ("f", "concurrent pushes: peak server RSS (sampled)", "MiB", LOWER,
     lambda t: get(t, "concurrent_push", "server_peak_rss_mib")),
    ("g", "idle RSS at start", "MiB", LOWER, lambda t: get(t, "idle_rss", "start", "rss_mib")),
    ("g", "RSS after the run (idle)", "MiB", LOWER, lambda t: get(t, "idle_rss", "after", "rss_mib")),
    ("g", "lifetime peak RSS (VmHWM)", "MiB", LOWER, lambda t: get(t, "idle_rss", "after", "hwm_mib")),
]

# bench.py arguments that change what a figure means; differing ones are flagged.
WORKLOAD_ARGS = ["quick", "runs", "size_mib", "chunk_mib", "layer_kib", "wrk_threads", "wrk_conns", "wrk_secs",
                 "tags", "tag_concurrency", "conc", "conc_mib"]


def num(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    a = abs(x)
    if a >= 100 or (isinstance(x, int) and not isinstance(x, bool)):
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def ratio(b, r, better):
    if better == INFO or b is None or r is None:
        return None
    if any(isinstance(x, float) and math.isnan(x) for x in (b, r)):
        return None
    num_, den = (b, r) if better == HIGHER else (r, b)
    if den == 0:
        return None
    return num_ / den


def openssl_16k_mbps(path):
    """MB/s of the 16384-byte column of `openssl speed -evp sha256` output."""
    try:
        text = open(path).read()
    except OSError:
        return None
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7 and f[0] == "sha256" and re.fullmatch(r"[\d.]+k", f[6]):
            return float(f[6][:-1]) / 1e3
    return None


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"bench-compare: cannot read {path}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench-results")
    ap.add_argument("berth", nargs="?", default=os.path.normpath(os.path.join(results, "berth.json")))
    ap.add_argument("reference", nargs="?", default=os.path.normpath(os.path.join(results, "reference.json")))
    ap.add_argument("--openssl", help="output of `openssl speed -evp sha256` (adds the SHA-256 bound)")
    a = ap.parse_args()

    B, R = load(a.berth), load(a.reference)
    bt, rt = B.get("tests", {}), R.get("tests", {})
    bm, rm = B.get("meta", {}), R.get("meta", {})

    print("## Berth vs reference registry (bench.py)")
    print()
    print(f"- berth: `{a.berth}` ({bm.get('time', '?')}, server `{bm.get('server_cmdline', '?')}`)")
    print(f"- reference: `{a.reference}` ({rm.get('time', '?')}, server `{rm.get('server_cmdline', '?')}`)")
    print(f"- machine: {bm.get('cpu_model', rm.get('cpu_model', '?'))}, {bm.get('cpus', rm.get('cpus', '?'))} cpus "
          "shared by client and server; read ratios, not absolute figures")
    ba, ra = bm.get("args", {}), rm.get("args", {})
    diff = [k for k in WORKLOAD_ARGS if ba.get(k) != ra.get(k)]
    if diff:
        print("- **WARNING: the two runs used different workloads:** "
              + ", ".join(f"{k}={ba.get(k)!r} vs {ra.get(k)!r}" for k in diff))
    elif ba.get("quick"):
        print("- note: `--quick` smoke run (small sizes, 1 run): not for figures")
    sha = openssl_16k_mbps(a.openssl) if a.openssl else None
    if sha:
        print(f"- SHA-256 on one core (openssl, 16 KiB blocks): {sha:,.0f} MB/s — bounds any push that verifies digests")
    print()
    print("ratio > 1 means Berth is better (berth/ref for rates, ref/berth for latency, time and memory).")
    print()
    print("| test | metric | berth | reference | ratio |")
    print("|---|---|---:|---:|---:|")
    better_n = worse_n = 0
    for sec, label, unit, better, fn in METRICS:
        bv, rv = fn(bt), fn(rt)
        if bv is None and rv is None:
            continue
        q = ratio(bv, rv, better)
        if q is None:
            qs = "info" if better == INFO else "—"
        else:
            qs = f"{q:.2f}"
            if q >= 1:
                better_n += 1
            else:
                worse_n += 1
                qs = f"**{qs}**"
        print(f"| {sec} | {label} ({unit}) | {num(bv)} | {num(rv)} | {qs} |")
    for name, t in (("berth", bt), ("reference", rt)):
        for k, v in t.items():
            if k.startswith("error_"):
                print(f"| {k[6:]} | **FAILED on {name}**: {str(v)[:150].replace('|', '/')} | | | |")
    if sha:
        for key, test in (("a", "mono_push"), ("b", "chunked_push")):
            bv, rv = get(bt, test, "mbps_median"), get(rt, test, "mbps_median")
            if bv is not None or rv is not None:
                pb = f"{100 * bv / sha:.0f}%" if bv is not None else "—"
                pr = f"{100 * rv / sha:.0f}%" if rv is not None else "—"
                print(f"| {key} | {test.replace('_', ' ')} as share of one-core SHA-256 | {pb} | {pr} | info |")
    print()
    print(f"Berth better or equal on {better_n} of {better_n + worse_n} compared metrics (worse ones in bold).")


if __name__ == "__main__":
    main()
