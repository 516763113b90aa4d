#!/usr/bin/env sh
# Roles: web (granian), worker (queue default), worker-gpu (queue gpu), beat (the periodic
# tasks; run exactly one), or any command.
set -eu
role="${1:-web}"
case "$role" in
  web)
    python manage.py migrate --noinput
    python manage.py collectstatic --noinput -v 0
    # Workers, threads, host and port come from GRANIAN_* (platform/env.example).
    # A killed worker process is replaced at once (tests/faults/test_serving_faults.py).
    exec granian --interface wsgi --respawn-failed-workers quorum.wsgi:application
    ;;
  worker)
    exec celery -A quorum worker -Q default --loglevel INFO --concurrency "${WORKER_CONCURRENCY:-2}"
    ;;
  worker-gpu)
    # One training run at a time per GPU; a run is acknowledged only when it ends (acks_late).
    exec celery -A quorum worker -Q gpu --loglevel INFO --concurrency 1 --prefetch-multiplier 1
    ;;
  beat)
    # e.g. the sweep that fails (resumably) training runs whose worker vanished
    exec celery -A quorum beat --loglevel INFO --schedule /tmp/celerybeat-schedule
    ;;
  *)
    exec "$@"
    ;;
esac
