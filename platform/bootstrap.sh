#!/usr/bin/env bash
# Create or refresh the virtual environment at .venv/ (shared by the run and test commands).
# Usage: platform/bootstrap.sh [extras], e.g. "test,bench". Re-installs only when pyproject.toml
# or the extras change, so repeated runs start in a second.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python_bin="${PYTHON:-python3}"
venv=".venv"

if [ ! -x "$venv/bin/python" ]; then
  echo "Creating $venv with $($python_bin --version)"
  "$python_bin" -m venv "$venv"
fi

spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp="$venv/.quorum-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
  # An earlier install with more extras still covers fewer: keep it.
  if [ -f "$stamp" ] && [ -z "$extras" ] && grep -q "^$(sha256sum pyproject.toml | cut -d' ' -f1) " "$stamp"; then
    exit 0
  fi
  echo "Installing Quorum and its dependencies into $venv (first time: a few minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
  "$venv/bin/python" -m pip install --quiet -e "$spec"
  echo "$want" > "$stamp"
fi
