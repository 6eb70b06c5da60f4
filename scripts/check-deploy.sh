#!/usr/bin/env bash
# Checks the deployment files without a cluster or an init system:
#
#   scripts/check-deploy.sh [-v] [-k]
#
#   compose  deploy/compose/*.yaml pass `docker-compose config` (Debian's
#            docker-compose 1.29, which validates against the Compose file
#            schema and resolves services, volumes and variables); the
#            scale-out file refuses to run without its passwords.
#   helm     deploy/helm/berth rendered by Helm's own engine (helm-python-sdk:
#            Helm v4's Go SDK) with the default values, the scale-out values and
#            the Ingress + ServiceMonitor values (deploy/helm/berth/ci/), every
#            object validated against the strict Kubernetes JSON schemas of 1.25
#            and the newest kubernetes-validate bundles, the ServiceMonitor
#            against scripts/lib/servicemonitor.schema.json; helm lint --strict;
#            replicaCount > 1 on the embedded stores must fail to render
#            (scripts/lib/check_chart.py).
#   systemd  deploy/systemd/berth.service passes `systemd-analyze verify` (with
#            ExecStart pointed at BERTH_BIN, since /usr/local/bin/berth is not
#            installed here) and `systemd-analyze security --offline=true`
#            rates it at most 2.0 (the score is printed).
#   monitoring  deploy/monitoring/alerts.yml passes `promtool check rules` and
#            the unit tests of alerts.test.yml (`promtool test rules`); every
#            expression of grafana-dashboard.json and alerts.yml names only
#            metrics berth exports (a /metrics scrape of a berth started here,
#            and the metric names in the server's source), the dashboard's
#            structure holds and its expressions parse
#            (scripts/lib/check_monitoring.py); the dashboard type-checks
#            against Grafana's own Dashboard schema (@grafana/schema, which
#            Grafana generates from the CUE kinds it validates with;
#            tests/grafana/check.mjs).
#
# Options:  -v, --verbose, -k, --keep (as the e2e scripts)
# Env:      BERTH_BIN (default ${CARGO_TARGET_DIR:-target}/debug/berth)
#
# Installs the Python packages it needs into target/tools/deploy-venv when
# missing (scripts/lib/deploy-venv.sh); needs docker-compose, systemd-analyze,
# promtool and python3 (scripts/install-deps.sh). Starts no server but berth
# on loopback, twice, each stopped before its step ends.
# Output: a line per step and last  CHECK-DEPLOY: N passed, M failed, K skipped
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/berth}
MAX_EXPOSURE=2.0

E2E_NAME=check-deploy
E2E_LABEL=CHECK-DEPLOY
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
# shellcheck source=lib/deploy-venv.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/deploy-venv.sh"
parse_args "$@"
require_tools "Debian packages: docker-compose, systemd, python3-venv, prometheus, nodejs (scripts/install-deps.sh)" \
  docker-compose systemd-analyze python3 curl promtool node
make_temp_dir
BERTH_PID=""
COMPOSE=$REPO_ROOT/deploy/compose
CHART=$REPO_ROOT/deploy/helm/berth
UNIT=$REPO_ROOT/deploy/systemd/berth.service
MONITORING=$REPO_ROOT/deploy/monitoring

# ---------------------------------------------------------------- compose ----
compose() { run_tool 60 docker-compose env -u POSTGRES_PASSWORD -u MINIO_ROOT_PASSWORD docker-compose "$@"; }
step_compose_embedded() {
  (cd "$T/work" && compose -p berth -f "$COMPOSE/compose.yaml" config) > "$T/work/embedded.yaml"
  expect_eq "$(grep -c '^  [a-z]' "$T/work/embedded.yaml" || true)" 2 "entries under services and volumes (berth, berth-data)"
  grep -q 'berth-data:/var/lib/berth' "$T/work/embedded.yaml" || fail "the data volume is not mounted at /var/lib/berth"
  echo "compose.yaml: valid; service berth, volume berth-data"
}
step_compose_scale_out() {
  must_fail "compose.scale-out.yaml without POSTGRES_PASSWORD" 'set POSTGRES_PASSWORD' \
    env -u POSTGRES_PASSWORD -u MINIO_ROOT_PASSWORD docker-compose -p berth -f "$COMPOSE/compose.scale-out.yaml" config -q
  (cd "$T/work" && run_tool 60 docker-compose env POSTGRES_PASSWORD=pg-secret MINIO_ROOT_PASSWORD=s3-secret \
    docker-compose -p berth -f "$COMPOSE/compose.scale-out.yaml" config) > "$T/work/scale-out.yaml"
  expect_eq "$(docker-compose -p berth -f "$T/work/scale-out.yaml" config --services 2>/dev/null | sort | tr '\n' ' ')" \
    "berth bucket minio postgres " "services"
  grep -q 'BERTH_META__URL: postgres://berth:pg-secret@postgres:5432/berth' "$T/work/scale-out.yaml" ||
    fail "BERTH_META__URL does not carry the PostgreSQL password"
  grep -q 'BERTH_STORAGE__S3__SECRET_ACCESS_KEY: s3-secret' "$T/work/scale-out.yaml" ||
    fail "the S3 secret key is not MinIO's root password"
  echo "compose.scale-out.yaml: valid; refuses to run without its passwords"
}

# ------------------------------------------------------------------- helm ----
chart() { run_tool 120 check_chart "$DEPLOY_PYTHON" "$REPO_ROOT/scripts/lib/check_chart.py" "$CHART" "$@"; }
step_venv() { deploy_venv_install; "$DEPLOY_PYTHON" -m pip list 2>/dev/null | grep -E 'helm-python-sdk|kubernetes-validate'; }
step_chart_default() { CHECK_CHART_TOML=$T/work/chart-berth.toml chart default; }
step_chart_config_accepted() {
  # berth reads BERTH_* as configuration: the caller's stay out.
  [[ -x $BERTH_BIN ]] || fail "$BERTH_BIN missing (cargo build -p berth-server, or set BERTH_BIN)"
  local v env_cmd=(env -u RUST_LOG) pid addr code
  while read -r v; do env_cmd+=(-u "$v"); done < <(compgen -e | grep '^BERTH_' || true)
  mkdir -p "$T/chart-data"
  "${env_cmd[@]}" "$BERTH_BIN" serve --config "$T/work/chart-berth.toml" --listen 127.0.0.1:0 \
    --data-dir "$T/chart-data" > "$T/work/chart-berth.log" 2>&1 < /dev/null &
  pid=$!
  addr=$(wait_for_line "$T/work/chart-berth.log" 'listening on 127\.0\.0\.1:[0-9]+' "$pid" 30) ||
    { cat "$T/work/chart-berth.log"; kill "$pid" 2>/dev/null; fail "berth did not start with the chart's berth.toml"; }
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://${addr#listening on }/readyz" || true)
  kill -TERM "$pid"; wait "$pid" || true
  expect_eq "$code" 200 "GET /readyz of berth serving the chart's berth.toml"
  echo "berth serve --config <the chart's berth.toml>: ready at ${addr#listening on }"
}
step_chart_scale_out() { chart scale-out "$CHART/ci/scale-out-values.yaml"; }
step_chart_ingress() { chart ingress "$CHART/ci/ingress-values.yaml"; }
step_chart_refused() { chart refused "$CHART/ci/replicas-embedded-values.yaml"; }

# ---------------------------------------------------------------- systemd ----
step_unit_verify() {
  [[ -x $BERTH_BIN ]] || fail "$BERTH_BIN missing (cargo build -p berth-server, or set BERTH_BIN)"
  sed "s#/usr/local/bin/berth#$BERTH_BIN#g" "$UNIT" > "$T/work/berth.service"
  run_tool 60 systemd-analyze systemd-analyze verify "$T/work/berth.service" 2>&1 | tee "$T/work/verify.out"
  [[ ! -s $T/work/verify.out ]] || fail "systemd-analyze verify printed warnings"
  echo "systemd-analyze verify: no warnings"
}
step_unit_security() {
  run_tool 60 systemd-analyze systemd-analyze security --offline=true "$UNIT" > "$T/work/security.out" 2>&1 || true
  { grep -v '^✓' "$T/work/security.out" || true; } | sed 's/ \{2,\}/  /g'
  local score
  score=$({ grep -oE 'Overall exposure level for [^:]+: [0-9.]+' "$T/work/security.out" || true; } | awk '{print $NF}')
  [[ -n $score ]] || fail "no exposure level in the output of systemd-analyze security"
  awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' || fail "exposure $score is over $MAX_EXPOSURE"
  note "systemd-analyze security: exposure $score (at most $MAX_EXPOSURE)"
}

# ------------------------------------------------------------- monitoring ----
step_rules_check() { run_tool 60 promtool promtool check rules "$MONITORING/alerts.yml"; }
step_rules_test() { (cd "$MONITORING" && run_tool 120 promtool promtool test rules alerts.test.yml); }
step_dashboard() {
  [[ -x $BERTH_BIN ]] || fail "$BERTH_BIN missing (cargo build -p berth-server, or set BERTH_BIN)"
  local v env_cmd=(env -u RUST_LOG) pid addr
  while read -r v; do env_cmd+=(-u "$v"); done < <(compgen -e | grep '^BERTH_' || true)
  mkdir -p "$T/metrics-data"
  "${env_cmd[@]}" "$BERTH_BIN" serve --listen 127.0.0.1:0 --data-dir "$T/metrics-data" \
    > "$T/work/metrics-berth.log" 2>&1 < /dev/null &
  pid=$!
  addr=$(wait_for_line "$T/work/metrics-berth.log" 'listening on 127\.0\.0\.1:[0-9]+' "$pid" 30) ||
    { cat "$T/work/metrics-berth.log"; kill "$pid" 2>/dev/null; fail "berth did not start"; }
  # A request first, so the request metrics have series in the scrape.
  curl -s -o /dev/null --max-time 5 "http://${addr#listening on }/v2/" || true
  curl -s --max-time 5 -o "$T/work/metrics.txt" "http://${addr#listening on }/metrics" || true
  kill -TERM "$pid"; wait "$pid" || true
  grep -q '^berth_http_requests_total' "$T/work/metrics.txt" || fail "no berth_http_requests_total in the scrape"
  run_tool 120 check_monitoring python3 "$REPO_ROOT/scripts/lib/check_monitoring.py" "$MONITORING" \
    "$REPO_ROOT/crates/server/src" "$T/work/metrics.txt"
}

step_dashboard_schema() {
  [[ -d $REPO_ROOT/tests/grafana/node_modules/@grafana/schema ]] ||
    fail "tests/grafana/node_modules missing (scripts/install-deps.sh, or npm ci in tests/grafana)"
  run_tool 120 grafana_schema node "$REPO_ROOT/tests/grafana/check.mjs" "$MONITORING/grafana-dashboard.json"
}

# -------------------------------------------------------------------- run ----
begin_client compose
step 1.1 "compose.yaml (Berth alone) passes docker-compose config" step_compose_embedded
group
step 1.2 "compose.scale-out.yaml (Berth + PostgreSQL + MinIO) passes docker-compose config" step_compose_scale_out
begin_client helm
step 2.1 "venv with helm-python-sdk and kubernetes-validate" step_venv
step 2.2 "default values: helm lint --strict, every object valid, PVC, one replica" step_chart_default
step 2.3 "berth serve accepts the berth.toml the chart renders by default (/readyz 200)" step_chart_config_accepted
group
step 2.4 "scale-out values: three replicas, no PVC, secrets only in the Secret" step_chart_scale_out
group
step 2.5 "Ingress + ServiceMonitor values: valid, ServiceMonitor against its schema" step_chart_ingress
group
step 2.6 "replicaCount=2 on the embedded stores fails to render" step_chart_refused
begin_client systemd
step 3.1 "systemd-analyze verify deploy/systemd/berth.service" step_unit_verify
group
step 3.2 "systemd-analyze security --offline=true: exposure at most $MAX_EXPOSURE" step_unit_security
begin_client monitoring
step 4.1 "promtool check rules deploy/monitoring/alerts.yml" step_rules_check
group
step 4.2 "promtool test rules deploy/monitoring/alerts.test.yml: alerts fire and stay silent as tested" step_rules_test
group
step 4.3 "dashboard and alerts use only metrics berth exports; dashboard structure; expressions parse" step_dashboard
group
step 4.4 "grafana-dashboard.json matches Grafana's Dashboard schema (@grafana/schema)" step_dashboard_schema
finish group
