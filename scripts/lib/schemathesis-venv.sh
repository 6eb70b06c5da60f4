# shellcheck shell=bash
# schemathesis, pinned, in a venv of its own under the tools dir (default
# target/tools), for scripts/check-openapi.sh. Source it, then call
# schemathesis_venv_install (idempotent: no network when the venv has it);
# SCHEMATHESIS is its command afterwards.
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=${BERTH_TOOLS_DIR:-${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target}/tools}/schemathesis-venv
SCHEMATHESIS=$SCHEMATHESIS_VENV/bin/schemathesis

schemathesis_venv_ok() {
  [[ -x $SCHEMATHESIS ]] && [[ $("$SCHEMATHESIS" --version 2>/dev/null) == *"$SCHEMATHESIS_VERSION"* ]]
}

schemathesis_venv_install() {
  schemathesis_venv_ok && return 0
  echo "schemathesis-venv: installing schemathesis==$SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV"
  rm -rf "$SCHEMATHESIS_VENV"
  python3 -m venv "$SCHEMATHESIS_VENV" ||
    { echo "schemathesis-venv: python3 -m venv failed (apt-get install python3-venv)" >&2; return 1; }
  "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
    { echo "schemathesis-venv: pip install schemathesis==$SCHEMATHESIS_VERSION failed" >&2; return 1; }
  schemathesis_venv_ok
}
