#!/usr/bin/env bash
# The whole test suite: installs what it needs (.venv/ with the test extras, Debian's chromium
# for the browser tests) and runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash platform/bootstrap.sh "test,bench"

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
  echo "Installing Debian's chromium for the browser tests"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

export QUORUM_VAR_DIR="${QUORUM_VAR_DIR:-$PWD/var/test}"
exec .venv/bin/python -m pytest "$@"
