# shellcheck shell=bash
# The Python packages that check deploy/helm/berth (scripts/check-deploy.sh),
# in a venv of their own under the tools dir (default target/tools), pinned:
#   helm-python-sdk    Helm v4's Go SDK as a wheel (libhelm_c + ctypes): the
#                      chart is rendered and linted by Helm's own engine
#   kubernetes-validate the Kubernetes OpenAPI schemas as JSON schemas, bundled
# Source it, then call deploy_venv_install (idempotent: no network when the
# venv has them); DEPLOY_PYTHON is the venv's python afterwards.
DEPLOY_VENV=${BERTH_TOOLS_DIR:-${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target}/tools}/deploy-venv
DEPLOY_PYTHON=$DEPLOY_VENV/bin/python
DEPLOY_PIP_PKGS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)

deploy_venv_ok() {
  [[ -x $DEPLOY_PYTHON ]] && "$DEPLOY_PYTHON" -c 'import helm_python, kubernetes_validate, jsonschema, yaml' 2>/dev/null
}

deploy_venv_install() {
  deploy_venv_ok && return 0
  echo "deploy-venv: installing ${DEPLOY_PIP_PKGS[*]} into $DEPLOY_VENV"
  rm -rf "$DEPLOY_VENV"
  python3 -m venv "$DEPLOY_VENV" || { echo "deploy-venv: python3 -m venv failed (apt-get install python3-venv)" >&2; return 1; }
  "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check "${DEPLOY_PIP_PKGS[@]}" ||
    { echo "deploy-venv: pip install ${DEPLOY_PIP_PKGS[*]} failed" >&2; return 1; }
  deploy_venv_ok
}
