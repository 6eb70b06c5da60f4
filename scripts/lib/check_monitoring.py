#!/usr/bin/env python3
"""Checks deploy/monitoring/ against the metrics Berth exports.

    check_monitoring.py MONITORING_DIR METRICS_SOURCE_DIR SCRAPE_FILE

- grafana-dashboard.json: a dashboard object (title, uid, schemaVersion >= 36, a
  datasource variable), panels with unique integer ids and a gridPos inside the
  24 columns, no two panels overlapping, every query panel with targets;
- every PromQL expression of the dashboard (Grafana's variables replaced by
  sample values) and of alerts.yml names only metrics Berth exports: those of
  SCRAPE_FILE (a /metrics scrape of a running berth, which shows the process_*
  metrics and those without labels) and those named in METRICS_SOURCE_DIR
  (the vectors, which a fresh server has not created yet), with _bucket, _sum
  and _count of histograms; `up` and `time` are Prometheus's own;
- every dashboard expression passes promtool's parser (`promtool check rules`
  on a file of recording rules, one per expression).

Prints a line per finding; exits 1 on any.
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile

GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$instance": ".*",
    "${instance}": ".*",
}
# Identifiers PromQL knows that are not metrics.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "time", "offset", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "label_values",
    "predict_linear", "delta", "deriv", "abs", "clamp_min", "clamp_max", "topk", "bottomk", "vector", "scalar",
    "bool", "le", "printf", "humanize", "humanizeDuration", "humanizePercentage",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_metrics(source_dir: pathlib.Path, scrape: pathlib.Path) -> set:
    names = set()
    for path in source_dir.rglob("*.rs"):
        names.update(re.findall(r'"((?:berth|process)_[a-z0-9_]+)"', path.read_text()))
    for line in scrape.read_text().splitlines():
        m = re.match(r"# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)", line)
        if m:
            names.add(m.group(1))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def metrics_in(expr: str) -> set:
    # Label matchers and strings hold no metric names.
    stripped = re.sub(r"\{[^}]*\}", "", expr)
    stripped = re.sub(r'"[^"]*"', "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    # Label names listed in by (...) / without (...) / on (...).
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", stripped))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]|e\d*|Inf|NaN", w)}


def known(name: str, exported: set) -> bool:
    if name in exported or name in {"up"}:
        return True
    return any(name.endswith(s) and name[: -len(s)] in exported for s in HISTOGRAM_SUFFIXES)


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def check_dashboard(path: pathlib.Path, problems: list) -> list:
    dash = json.loads(path.read_text())
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dash:
            problems.append(f"{path.name}: no {key}")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"{path.name}: schemaVersion {dash.get('schemaVersion')!r} is not an integer >= 36")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problems.append(f"{path.name}: no datasource variable of type datasource")
    exprs = []
    for v in variables.values():
        if v.get("type") == "query":
            query = v.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", text or "")
            if not m:
                problems.append(f"{path.name}: variable {v.get('name')}: query {text!r} is not label_values(expr, label)")
            else:
                exprs.append((f"variable {v['name']}", m.group(1)))
    ids = set()
    placed = []
    for panel in dash.get("panels", []):
        pid = panel.get("id")
        where = f"panel {pid} ({panel.get('title')!r})"
        if not isinstance(pid, int) or pid in ids:
            problems.append(f"{path.name}: {where}: id missing or not unique")
        ids.add(pid)
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"{path.name}: {where}: gridPos needs integers h, w, x, y")
            continue
        if grid["x"] < 0 or grid["w"] < 1 or grid["x"] + grid["w"] > 24 or grid["h"] < 1:
            problems.append(f"{path.name}: {where}: gridPos {grid} is outside the 24 columns")
        for other_where, other in placed:
            if overlap(grid, other):
                problems.append(f"{path.name}: {where} overlaps {other_where}")
        placed.append((where, grid))
        if panel.get("type") == "row":
            continue
        if not panel.get("type") or not panel.get("title"):
            problems.append(f"{path.name}: {where}: no type or title")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{path.name}: {where}: no targets")
        for t in targets:
            if not t.get("expr"):
                problems.append(f"{path.name}: {where}: target {t.get('refId')} has no expr")
            else:
                exprs.append((f"{where} target {t.get('refId')}", t["expr"]))
    return exprs


def alert_exprs(path: pathlib.Path) -> list:
    # alerts.yml is YAML; its expressions are the `expr:` values, single-line
    # or `|` blocks, which this reads without a YAML library.
    exprs, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"(\s*)expr:\s*(.*)$", lines[i])
        if m:
            indent, rest = len(m.group(1)), m.group(2)
            if rest.strip() == "|":
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                exprs.append((f"{path.name} expr near line {i}", " ".join(block)))
                continue
            exprs.append((f"{path.name} line {i + 1}", rest))
        i += 1
    return exprs


def promtool_parse(exprs: list, problems: list) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard_expr_{n}", "expr": substitute(e)} for n, (_, e) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        json.dump(rules, f)
    done = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    pathlib.Path(f.name).unlink()
    if done.returncode != 0:
        problems.append("promtool check rules of the dashboard's expressions failed:\n" + done.stdout + done.stderr)
    else:
        print(f"promtool: the dashboard's {len(exprs)} expressions parse")


def main() -> int:
    monitoring, source, scrape = map(pathlib.Path, sys.argv[1:4])
    problems: list = []
    exported = exported_metrics(source, scrape)
    dash_exprs = check_dashboard(monitoring / "grafana-dashboard.json", problems)
    all_exprs = dash_exprs + alert_exprs(monitoring / "alerts.yml")
    used = set()
    for where, expr in all_exprs:
        for name in metrics_in(substitute(expr)):
            used.add(name)
            if not known(name, exported):
                problems.append(f"{where}: {name} is not a metric berth exports")
    promtool_parse(dash_exprs, problems)
    for p in problems:
        print(f"PROBLEM: {p}")
    berth_used = sorted(n for n in used if n.startswith("berth_"))
    print(f"{len(all_exprs)} expressions (dashboard and alerts) use {len(used)} metrics, "
          f"{len(berth_used)} of Berth's own; {len(exported)} exported names known")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
