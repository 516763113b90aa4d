#!/usr/bin/env bash
# The one command a newcomer runs: install into .venv/, migrate, seed the demo, and start the
# web server with a Celery worker beside it. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash platform/bootstrap.sh
exec .venv/bin/quorum run "$@"
