"""Soak (issue 19): paced annotators for a minute while a server worker is killed, then an audit.

Usage::

    .venv/bin/python benchmarks/soak.py                                   # 100 annotators, 60 s
    .venv/bin/python benchmarks/soak.py --annotators 20 --duration 10 --kill-at 4

What it does:

1. Creates a fresh PostgreSQL database (``--database-url``), migrates and seeds it with
   serving.py's ``seed`` (tiny items, k votes wanted, gold mixed in, tokens), and starts granian
   on ``quorum.wsgi`` on loopback with ``--workers`` processes, respawning a worker that dies.
2. Runs ``--annotators`` careful annotators (:func:`careful_annotator`): GET next, think
   (exponential, mean ``--think-ms``), POST the vote with an idempotency key made from the
   assignment; on a broken connection or a 5xx the same vote is sent again with the same key
   (as a browser's retry would), up to ``--retries`` times. Each keeps a ledger of the votes the
   server said it saved (200 or 201).
3. At ``--kill-at`` seconds SIGKILLs one granian worker process (requests on it are cut) and
   measures the time until granian has respawned it and until every annotator voted again.
4. Audits the database against the ledgers: lost votes (told saved, not in the database), votes
   stored twice (a key or an (annotator, item) pair twice), items given more votes than wanted
   (a slot handed out twice), and prints one table with cycles/s and p50/p99 of next and vote.

Every loop is bounded by time and count; the database is dropped at the end (``--keep-db``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402 - after the path insert, as in serving.py
    _admin_conn,
    _assignment_id,
    _children,
    _request,
    create_database,
    db_name,
    drop_database,
    free_port,
    pct,
    seed,
    server_command,
    stop,
    wait_ready,
)

RETRYABLE = {500, 502, 503, 504}


@dataclass
class Ledger:
    """What the annotators were told, and how long it took."""

    saved: dict[int, set[str]] = field(default_factory=dict)  # annotator -> keys told saved
    refused: Counter = field(default_factory=Counter)  # final 4xx of a vote, by status
    errors: Counter = field(default_factory=Counter)  # failed attempts (retried), by kind
    retries: int = 0
    gave_up: int = 0
    next_ms: list[float] = field(default_factory=list)
    vote_ms: list[float] = field(default_factory=list)
    successes: list[tuple[float, int]] = field(default_factory=list)  # (time, annotator)
    exhausted: int = 0

    def n_saved(self) -> int:
        return sum(len(keys) for keys in self.saved.values())


class _Connection:
    """One keep-alive connection, reopened after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams = None

    async def send(self, data: bytes, timeout: float) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), timeout
            )
        try:
            status, body, keep = await asyncio.wait_for(_request(*self.streams, data), timeout)
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return status, body

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def careful_annotator(index: int, port: int, project_id: int, token: str, ledger: Ledger,
                            stop_at: float, *, max_cycles: int = 100_000, think_ms: float = 150.0,
                            retries: int = 20, timeout: float = 10.0) -> None:
    """GET next -> think -> POST vote, retrying a vote whose answer was lost with the same key."""
    auth = f"Host: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
    next_req = f"GET /api/projects/{project_id}/next/ HTTP/1.1\r\n{auth}\r\n".encode()
    think = random.Random(index).expovariate
    ledger.saved.setdefault(index, set())
    conn = _Connection(port)
    perf = time.perf_counter
    cycles = 0
    try:
        while cycles < max_cycles and perf() < stop_at:
            t0 = perf()
            try:
                status, body = await conn.send(next_req, timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError) as exc:
                ledger.errors[f"next {type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)
                continue
            if status == 204:
                ledger.exhausted += 1
                return
            if status != 200:
                ledger.errors[f"next {status}"] += 1
                await asyncio.sleep(0.05)
                continue
            ledger.next_ms.append((perf() - t0) * 1000)
            try:
                assignment = _assignment_id(body)
            except (ValueError, KeyError):
                ledger.errors["next unreadable body"] += 1
                continue
            if think_ms > 0:
                await asyncio.sleep(min(think(1000 / think_ms), max(0.0, stop_at - perf())))
            key = f"soak-{index}-{assignment}"
            payload = f'{{"label":"normal","idempotency_key":"{key}"}}'.encode()
            vote_req = (f"POST /api/assignments/{assignment}/vote/ HTTP/1.1\r\n{auth}"
                        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                        ).encode() + payload
            for attempt in range(retries + 1):
                t1 = perf()
                try:
                    status, body = await conn.send(vote_req, timeout)
                except (TimeoutError, OSError, asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError, ValueError) as exc:
                    status, kind = None, type(exc).__name__
                else:
                    kind = str(status)
                if status in (200, 201):
                    ledger.saved[index].add(key)
                    ledger.vote_ms.append((perf() - t1) * 1000)
                    ledger.successes.append((time.monotonic(), index))
                    cycles += 1
                    break
                if status is not None and status not in RETRYABLE:
                    ledger.refused[status] += 1
                    break
                ledger.errors[f"vote {kind}"] += 1
                if attempt == retries:
                    ledger.gave_up += 1
                    break
                ledger.retries += 1
                await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
    finally:
        conn.close()


# -- the audit ------------------------------------------------------------------------------------


@dataclass
class Audit:
    votes_in_database: int
    told_saved: int
    lost: int  # told saved, not in the database
    stored_twice: int  # a key, or an (annotator, item) pair, more than once
    slots_over: int  # votes beyond an item's votes_wanted: a slot handed out twice
    lost_keys: list[str]


def audit(cursor, project_id: int, worker_ids: dict[int, int], ledger: Ledger) -> Audit:
    """Compare the project's votes (a DB-API cursor on its database) with what clients were told."""
    cursor.execute(
        "SELECT worker_id, item_id, idempotency_key FROM labeling_vote "
        "WHERE project_id = %s AND idempotency_key LIKE 'soak-%%'",
        [project_id],
    )
    rows = cursor.fetchall()
    keys = Counter((worker, key) for worker, _, key in rows)
    pairs = Counter((worker, item) for worker, item, _ in rows)
    lost = [key for index, saved in ledger.saved.items() for key in sorted(saved)
            if keys[(worker_ids[index], key)] == 0]
    cursor.execute(
        "SELECT COALESCE(SUM(GREATEST(n - votes_wanted, 0)), 0) FROM ("
        " SELECT i.id, i.votes_wanted, COUNT(v.id) AS n FROM labeling_item i"
        " JOIN labeling_vote v ON v.item_id = i.id WHERE i.project_id = %s AND NOT i.is_gold"
        " GROUP BY i.id, i.votes_wanted) counted",
        [project_id],
    )
    slots_over = int(cursor.fetchone()[0])
    return Audit(
        votes_in_database=len(rows),
        told_saved=ledger.n_saved(),
        lost=len(lost),
        stored_twice=sum(n - 1 for n in keys.values() if n > 1)
        + sum(n - 1 for n in pairs.values() if n > 1),
        slots_over=slots_over,
        lost_keys=lost[:10],
    )


def recovery_seconds(ledger: Ledger, fault_at: float, annotators: int) -> tuple[float, float]:
    """Seconds from the fault to the first saved vote, and to a saved vote from every annotator
    still working (nan when that did not happen)."""
    after = sorted((t, i) for t, i in ledger.successes if t > fault_at)
    if not after:
        return float("nan"), float("nan")
    seen: set[int] = set()
    for t, index in after:
        seen.add(index)
        if len(seen) >= annotators:
            return after[0][0] - fault_at, t - fault_at
    return after[0][0] - fault_at, float("nan")


def worker_ids_by_index(cursor, n: int) -> dict[int, int]:
    """serving.seed names its annotators bench-annotator-<index>."""
    cursor.execute(
        "SELECT username, id FROM auth_user WHERE username LIKE 'bench-annotator-%%'"
    )
    ids = {int(name.rsplit("-", 1)[1]): pk for name, pk in cursor.fetchall()}
    return {i: ids[i] for i in range(n)}


# -- the soak -------------------------------------------------------------------------------------


def granian_command(port: int, workers: int, threads: int) -> list[str]:
    """serving.py's production command, with a dead worker respawned at once."""
    command = server_command(argparse.Namespace(server="granian", workers=workers,
                                                threads=threads), port)
    return [*command, "--respawn-failed-workers", "--respawn-interval", "0.2"]


def terminate_backends(database_url: str, spare: tuple[int, ...] = ()) -> int:
    """pg_terminate_backend on every connection to the database but ``spare``; returns how many."""
    import psycopg

    for attempt in range(20):
        try:
            conn = _admin_conn(database_url)
            break
        except psycopg.OperationalError:
            # A shared server can be at max_connections for a moment (seen under load).
            if attempt == 19:
                raise
            time.sleep(0.25)
    with conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND NOT pid = ANY(%s)",
            [db_name(database_url), list(spare)],
        ).fetchall()
    return sum(1 for (done,) in rows if done)


async def kill_a_worker(server_pid: int) -> dict:
    """SIGKILL one granian worker; wait (30 s at most) until granian has started another."""
    before = set(_children(server_pid))
    if not before:
        return {"fault": "worker kill", "error": "no worker process found"}
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    report = {"fault": f"SIGKILL granian worker {victim}", "at": killed,
              "respawned_s": float("nan")}
    while time.monotonic() < killed + 30:
        now = set(_children(server_pid))
        if victim not in now and now - before:
            report["respawned_s"] = time.monotonic() - killed
            break
        await asyncio.sleep(0.02)
    return report


async def kill_connections(database_url: str, spare: tuple[int, ...] = ()) -> dict:
    """Terminate the site's PostgreSQL connections (from a thread: the annotators go on)."""
    at = time.monotonic()
    n = await asyncio.to_thread(terminate_backends, database_url, spare)
    return {"fault": f"pg_terminate_backend x {n}", "at": at, "terminated": n}


Fault = tuple[float, Callable[[], Awaitable[dict]]]


async def run_annotators(port: int, project_id: int, tokens: list[str], *, duration: float,
                         think_ms: float, retries: int, faults: list[Fault]
                         ) -> tuple[Ledger, list[dict], float]:
    """``len(tokens)`` careful annotators for ``duration`` seconds; each fault starts ``at``
    seconds in. Returns the ledger, one report per fault and the wall time."""
    ledger = Ledger()
    start = time.perf_counter()
    stop_at = start + duration
    started = time.monotonic()
    tasks = [
        asyncio.create_task(careful_annotator(i, port, project_id, token, ledger, stop_at,
                                              think_ms=think_ms, retries=retries))
        for i, token in enumerate(tokens)
    ]

    async def scheduled(at: float, fault: Callable[[], Awaitable[dict]]) -> dict:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        return await fault()

    fault_tasks = [asyncio.create_task(scheduled(at, fault)) for at, fault in faults]
    await asyncio.gather(*tasks)
    reports = list(await asyncio.gather(*fault_tasks))
    for report in reports:
        if "at" in report:
            report["first_vote_s"], report["all_voted_s"] = recovery_seconds(
                ledger, report["at"], len(tokens) - ledger.exhausted)
    return ledger, reports, time.perf_counter() - start


def print_table(args: argparse.Namespace, ledger: Ledger, result: Audit, reports: list[dict],
                wall: float) -> None:
    report = next((r for r in reports if "respawned_s" in r), {})
    first, everyone = report.get("first_vote_s", float("nan")), report.get("all_voted_s", float("nan"))
    print()
    print(f"soak: {args.annotators} annotators, {args.duration:g} s, think {args.think_ms:g} ms "
          f"mean, granian {args.workers} workers x {args.threads} threads, one worker SIGKILLed "
          f"at {args.kill_at:g} s; load average before: {args.load_before}")
    header = (f"{'cycles/s':>9} {'next p50':>9} {'next p99':>9} {'vote p50':>9} {'vote p99':>9} "
              f"{'told saved':>11} {'in db':>7} {'lost':>5} {'twice':>6} {'slots over':>11} "
              f"{'respawn s':>10} {'first vote s':>13} {'all voted s':>12}")
    print(header)
    print("-" * len(header))
    print(f"{result.told_saved / wall:>9.1f} {pct(ledger.next_ms, .5):>8.1f}m "
          f"{pct(ledger.next_ms, .99):>8.1f}m {pct(ledger.vote_ms, .5):>8.1f}m "
          f"{pct(ledger.vote_ms, .99):>8.1f}m {result.told_saved:>11} "
          f"{result.votes_in_database:>7} {result.lost:>5} {result.stored_twice:>6} "
          f"{result.slots_over:>11} {report.get('respawned_s', float('nan')):>10.2f} "
          f"{first:>13.2f} {everyone:>12.2f}")
    print(f"failed attempts (retried): {dict(ledger.errors) or 'none'}; retries {ledger.retries}; "
          f"gave up {ledger.gave_up}; refused votes {dict(ledger.refused) or 'none'}; "
          f"annotators out of work {ledger.exhausted}")
    if result.lost_keys:
        print(f"lost (first 10): {result.lost_keys}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--kill-at", type=float, default=30.0, help="Seconds in: kill a worker.")
    parser.add_argument("--think-ms", type=float, default=150.0)
    parser.add_argument("--retries", type=int, default=20)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--gold", type=int, default=200)
    parser.add_argument("--gold-rate", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--history", type=int, default=20_000,
                        help="Finished items from earlier days (see serving.py).")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/quorum_soak")
    parser.add_argument("--keep-db", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    var_dir = Path(tempfile.mkdtemp(prefix="quorum-soak-"))
    (var_dir / "static").mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "quorum.settings",
        "DATABASE_URL": args.database_url,
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECRET_KEY": "soak-benchmark-only",
        "QUORUM_VAR_DIR": str(var_dir),
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    server = None
    created = False
    log = var_dir / "granian.log"
    try:
        created = create_database(args.database_url, reuse=False)
        project_id, tokens = seed(args, args.annotators)
        port = free_port()
        with open(log, "wb") as out:
            server = subprocess.Popen(
                granian_command(port, args.workers, args.threads), cwd=ROOT, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        asyncio.run(wait_ready(port, project_id, tokens[0], timeout=300))
        ledger, reports, wall = asyncio.run(run_annotators(
            port, project_id, tokens, duration=args.duration, think_ms=args.think_ms,
            retries=args.retries, faults=[(args.kill_at, lambda: kill_a_worker(server.pid))]))
        import psycopg

        with psycopg.connect(args.database_url.replace("postgres://", "postgresql://")) as conn:
            with conn.cursor() as cursor:
                result = audit(cursor, project_id, worker_ids_by_index(cursor, args.annotators),
                               ledger)
        print_table(args, ledger, result, reports, wall)
        return 0 if result.lost == result.stored_twice == result.slots_over == 0 else 1
    finally:
        stop(server)
        if log.exists() and log.stat().st_size:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print("granian log (last lines):\n  " + "\n  ".join(tail), file=sys.stderr)
        if created and not args.keep_db:
            with suppress(Exception):
                from django.db import connections

                connections.close_all()
            drop_database(args.database_url)
        shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
