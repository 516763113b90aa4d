"""Fault suite (issue 19): the crowd loop over real HTTP while its PostgreSQL connections are
killed and a server worker is killed.

A granian server (quorum.wsgi, as deployed) runs on loopback against the test database, and
benchmarks/soak.py's careful annotators vote through it with tokens, resending a vote whose
answer was lost with the same idempotency key, as a browser would. Mid-stream the site's
PostgreSQL backends are terminated (pg_terminate_backend) twice, and a granian worker is
SIGKILLed once (granian respawns it). Afterwards the votes in the database are audited against
what the clients were told (200/201): none lost, none stored twice, no item given more votes
than it wanted; after each fault votes are saved again without restarting the server, and the
seconds to recover are printed (``pytest -s``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
from django.db import connection

from benchmarks.serving import free_port, seed, stop, wait_ready
from benchmarks.soak import (
    Ledger,
    audit,
    careful_annotator,
    granian_command,
    kill_a_worker,
    kill_connections,
    run_annotators,
    worker_ids_by_index,
)
from tests.training.test_celery_worker import _database_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
ANNOTATORS = 16
DURATION = 20.0
# Under CI's load a worker can take a minute to import the site.
READY_SECONDS = 240


@pytest.fixture
def server(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend and the crowd lane need PostgreSQL; set DATABASE_URL")
    args = argparse.Namespace(items=3000, gold=20, gold_rate=0.1, k=3, history=0)
    project_id, tokens = seed(args, ANNOTATORS)
    (tmp_path / "static").mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "quorum.settings",
        "DATABASE_URL": _database_url(),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "QUORUM_VAR_DIR": str(tmp_path),
        "LOG_LEVEL": "WARNING",
        # Stopping: workers still holding the annotators' keep-alive connections are killed
        # after 3 s instead of waited for (the audit is done by then; it cost ~7 s a run).
        "GRANIAN_WORKERS_KILL_TIMEOUT": "3",
    }
    port = free_port()
    log = tmp_path / "granian.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(granian_command(port, workers=2, threads=3), cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        asyncio.run(wait_ready(port, project_id, tokens[0], timeout=READY_SECONDS))
        yield process, port, project_id, tokens, log
    finally:
        stop(process)


def test_no_vote_lost_when_connections_and_a_worker_are_killed(server):
    process, port, project_id, tokens, log = server
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        spare = (cursor.fetchone()[0],)  # this test's own connection, which audits afterwards
    url = _database_url()
    faults = [
        (4.0, lambda: kill_connections(url, spare)),
        (9.0, lambda: kill_a_worker(process.pid)),
        (14.0, lambda: kill_connections(url, spare)),
    ]
    ledger, reports, wall = asyncio.run(run_annotators(
        port, project_id, tokens, duration=DURATION, think_ms=100, retries=30, faults=faults))

    # The same server process answers new clients afterwards: no restart was needed.
    assert process.poll() is None, log.read_text(errors="replace")[-3000:]
    after = Ledger()
    asyncio.run(careful_annotator(0, port, project_id, tokens[0], after,
                                  stop_at=time.perf_counter() + 30, max_cycles=3,
                                  think_ms=0))
    assert after.n_saved() == 3, (after.errors, after.refused)

    with connection.cursor() as cursor:
        workers = worker_ids_by_index(cursor, ANNOTATORS)
        for index, keys in after.saved.items():
            ledger.saved.setdefault(index, set()).update(keys)
        result = audit(cursor, project_id, workers, ledger)

    print(f"\n{ANNOTATORS} annotators for {wall:.1f} s: {result.told_saved} votes told saved, "
          f"{result.votes_in_database} in the database; failed attempts {dict(ledger.errors)}, "
          f"retries {ledger.retries}, refused {dict(ledger.refused)}")
    for report in reports:
        print(f"  {report['fault']}: first vote saved after {report['first_vote_s']:.2f} s, "
              f"every annotator after {report['all_voted_s']:.2f} s"
              + (f", worker respawned after {report['respawned_s']:.2f} s"
                 if "respawned_s" in report else ""))

    assert result.lost == 0, f"votes told saved but missing: {result.lost_keys}"
    assert result.stored_twice == 0
    assert result.slots_over == 0
    assert result.votes_in_database == result.told_saved
    assert ledger.gave_up == 0 and not ledger.refused, (ledger.gave_up, ledger.refused)
    assert reports[0]["terminated"] > 0 and reports[2]["terminated"] > 0
    assert not math.isnan(reports[1]["respawned_s"]), "granian did not respawn the worker"
    for report in reports:
        # Votes were saved again after every fault, and by every annotator.
        assert not math.isnan(report["all_voted_s"]), report
