#!/usr/bin/env bash
# Installs what Berth's tests and benchmark need, on Debian 12, when missing.
#
# Idempotent: when everything is present it changes nothing and does not touch
# the network. Run as root (or as a user with passwordless sudo).
#
#   apt:  skopeo podman uidmap docker.io containerd docker-registry wrk curl jq
#         tar openssl procps python3
#   apt:  docker-compose systemd binutils python3-venv (scripts/check-deploy.sh
#         and scripts/e2e-image.sh: compose config, systemd-analyze,
#         objcopy/readelf, the venv below)
#   apt:  prometheus, for its promtool (scripts/check-deploy.sh checks and unit
#         tests deploy/monitoring/); the Prometheus daemon the package may
#         start is stopped and disabled: nothing here needs it running
#   pip:  helm-python-sdk and kubernetes-validate, pinned, in a venv under
#         target/tools (scripts/lib/deploy-venv.sh), when missing
#   pip:  schemathesis, pinned, in a venv under target/tools
#         (scripts/lib/schemathesis-venv.sh, for scripts/check-openapi.sh),
#         when missing
#   apt:  chromium, for the web UI's browser tests (scripts/e2e-ui.sh drives
#         it with Playwright; no browser is downloaded)
#   apt:  nodejs npm, only when there is no `node` at all (Debian 12: Node 18;
#         tests/ui needs Node 20 or later)
#   rust: the rustfmt and clippy components of the active toolchain
#   npm:  tests/oidc's, tests/grafana's and tests/ui's locked packages (npm
#         ci), when node_modules lacks them
#
# podman is installed without its Recommends: pushing, pulling and inspecting
# images (all the tests need) work with its hard dependencies (runc, conmon,
# containers-common) and the kernel's overlay driver as root.
set -euo pipefail

APT_PKGS=(
  skopeo podman uidmap
  docker.io containerd
  docker-registry
  wrk curl jq tar openssl procps python3
  docker-compose systemd binutils python3-venv
  prometheus
  chromium
)
# Commands the tests call; checked after the install as a sanity check.
COMMANDS=(skopeo podman newuidmap docker dockerd containerd ctr docker-registry wrk curl jq tar openssl ps python3 node npm
  docker-compose systemd-analyze objcopy readelf promtool chromium)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: ERROR: %s\n' "$*" >&2; exit 1; }

# The Rust toolchain lives under ~/.cargo/bin with rustup; make sure it is found
# even when the caller's PATH lacks it (e.g. a minimal CI environment).
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  case ":$PATH:" in
    *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
    *) PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;;
  esac
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root to run: $*"
  fi
}

# ---------------------------------------------------------------- apt packages
if ! command -v dpkg-query >/dev/null 2>&1; then
  die "dpkg-query not found: this script supports Debian 12 only"
fi

missing=()
for p in "${APT_PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = "installed" ] || missing+=("$p")
done
# Node.js for tests/oidc: any `node` will do (Debian's, or one installed
# another way, which Debian's packages would conflict with).
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)

if [ "${#missing[@]}" -gt 0 ]; then
  log "missing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  APT=(apt-get -q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
  t0=$SECONDS
  as_root env DEBIAN_FRONTEND=noninteractive "${APT[@]}" update
  as_root env DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "${missing[@]}"
  log "apt install done in $((SECONDS - t0)) s"
else
  log "apt packages: all present"
fi

# The prometheus package enables its daemon (where policy-rc.d does not stop
# it from starting): only promtool is wanted, and a Prometheus listening on
# :9090 would be a stray service on a test machine.
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ]; then
    as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  log "prometheus: promtool installed, the daemon stopped and disabled"
fi

for c in "${COMMANDS[@]}"; do
  command -v "$c" >/dev/null 2>&1 || die "command '$c' still not found after install"
done

# ---------------------------------------------------------------- rust components
command -v cargo >/dev/null 2>&1 || die "cargo not found (expected the rustup toolchain under ~/.cargo/bin)"
need=()
cargo fmt --version >/dev/null 2>&1 || need+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || need+=(clippy)
if [ "${#need[@]}" -gt 0 ]; then
  command -v rustup >/dev/null 2>&1 || die "rust components missing (${need[*]}) and rustup not found"
  log "adding rust components: ${need[*]}"
  rustup component add "${need[@]}" || die "rustup component add ${need[*]} failed"
  cargo fmt --version >/dev/null 2>&1 || die "cargo fmt still unavailable"
  cargo clippy --version >/dev/null 2>&1 || die "cargo clippy still unavailable"
else
  log "rust components rustfmt, clippy: present"
fi

# ---------------------------------------------------------------- npm packages
# The test OpenID Connect provider's packages, the Grafana dashboard schema
# checker's and the browser tests' (playwright-core, @axe-core/playwright),
# each exactly as its package-lock.json has them.
for dir in tests/oidc tests/grafana tests/ui; do
  if [ ! -f "$ROOT/$dir/node_modules/.package-lock.json" ]; then
    log "installing $dir npm packages (npm ci)"
    t0=$SECONDS
    (cd "$ROOT/$dir" && npm ci --no-audit --no-fund) || die "npm ci in $dir failed"
    log "npm ci done in $((SECONDS - t0)) s"
  else
    log "$dir npm packages: present"
  fi
done

# ---------------------------------------------------------------- pip packages
# The Helm chart's renderer and the Kubernetes schemas (scripts/check-deploy.sh).
# shellcheck source=lib/deploy-venv.sh source-path=SCRIPTDIR
source "$ROOT/scripts/lib/deploy-venv.sh"
if deploy_venv_ok; then
  log "deploy venv (helm-python-sdk, kubernetes-validate): present"
else
  t0=$SECONDS
  deploy_venv_install || die "could not install the deploy venv"
  log "deploy venv installed in $((SECONDS - t0)) s"
fi
# The admin API's check against its OpenAPI document (scripts/check-openapi.sh).
# shellcheck source=lib/schemathesis-venv.sh source-path=SCRIPTDIR
source "$ROOT/scripts/lib/schemathesis-venv.sh"
if schemathesis_venv_ok; then
  log "schemathesis venv: present"
else
  t0=$SECONDS
  schemathesis_venv_install || die "could not install the schemathesis venv"
  log "schemathesis venv installed in $((SECONDS - t0)) s"
fi

log "ok"
