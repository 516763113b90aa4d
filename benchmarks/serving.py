"""Serving benchmark (issue 4): the crowd loop over HTTP, granian (production) beside gunicorn.

Usage::

    .venv/bin/python benchmarks/serving.py                       # N = 10, 50, 100; 20 s each, both servers
    .venv/bin/python benchmarks/serving.py --levels 100 --duration 30 --servers granian --workers 2
    QUORUM_CROWD_LANE=false .venv/bin/python benchmarks/serving.py   # every request through DRF
    .venv/bin/python benchmarks/serving.py --database-url postgres://postgres@127.0.0.1:5432/quorum_bench

What it does, for each server in ``--servers`` (granian, the production server, then gunicorn,
the peer it replaced), in turn:

1. Creates a dedicated PostgreSQL database (``--database-url``, default ``quorum_bench`` on
   127.0.0.1; refused if it exists unless ``--reuse-db``), migrates it and seeds one project:
   ``--items`` tiny regular items (k = ``--k``), ``--gold`` gold items (gold rate
   ``--gold-rate``), two classes, ``--history`` finished items with earlier days' votes, and
   max(levels) crowd workers with API tokens. ``aggregate_every`` is set high so that the
   per-vote aggregation check takes its "not due" path, the steady state between Celery runs;
   no worker runs here.
2. Starts the server on ``quorum.wsgi:application`` on loopback (``--workers`` processes x
   ``--threads`` threads; gunicorn gthread preloaded, as it was deployed; DEBUG=false, no access
   log, no worker recycling).
3. For each N in ``--levels``: N simulated annotators, each an asyncio task with its own
   keep-alive connection and token, loop GET next -> POST vote (answer "normal"; gold answers
   are "normal" too, so nobody is blocked) for ``--duration`` seconds after ``--warmup``
   seconds, or ``--max-cycles`` cycles each. The load generator is this one process (one
   core's worth at most, request bytes pre-built, responses parsed by hand, no HTTP library).
4. Stops the server and drops the database, also on Ctrl-C or an error (``--keep-db`` keeps it).

Then it prints one table: server, N, cycles/s (a cycle = 200 next + 201 vote), p50/p99 latency
of next, vote and the whole cycle, errors (non-2xx or a broken connection), and CPU seconds
per wall second spent by the load generator, the server and PostgreSQL (from /proc), so the
split of the 2 cores is visible.

Loopback only; every loop is bounded by time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- database -----------------------------------------------------------------------------------


def _admin_conn(url: str):
    import psycopg

    parts = urlparse(url)
    return psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password,
        dbname="postgres",
        autocommit=True,
    )


def db_name(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def create_database(url: str, *, reuse: bool) -> bool:
    """Create the benchmark database; returns whether it was created here."""
    name = db_name(url)
    with _admin_conn(url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and not reuse:
            raise SystemExit(f"database {name} exists; drop it or pass --reuse-db")
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            return True
    return False


def drop_database(url: str) -> None:
    name = db_name(url)
    with _admin_conn(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(args: argparse.Namespace, n_workers: int) -> tuple[int, list[str]]:
    """Migrate and seed in this process; returns the project id and one token per worker."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections
    from rest_framework.authtoken.models import Token

    from labeling.models import Item, LabelClass, Membership, Project

    call_command("migrate", verbosity=0)
    project = Project.objects.create(
        name=f"serving-bench-{os.getpid()}",
        overlap=args.k,
        max_overlap=args.k,
        gold_rate=args.gold_rate,
        # Never due during the run: the per-vote check takes its cheap path, as between runs.
        aggregate_every=1_000_000,
    )
    normal = LabelClass.objects.create(project=project, name="normal", index=0)
    LabelClass.objects.create(project=project, name="abnormal", index=1)
    items = [
        Item(
            project=project, content_hash=f"{i:064x}", source_name=f"bench-{i}.png",
            image=f"items/bench/{i}.png", thumbnail=f"items/bench/{i}.thumb.png",
            width=28, height=28, votes_wanted=args.k,
            is_gold=i < args.gold, expert_answer=normal if i < args.gold else None,
        )
        for i in range(args.items + args.gold)
    ]
    Item.objects.bulk_create(items, batch_size=5000)
    User = get_user_model()
    users = User.objects.bulk_create(
        User(username=f"bench-annotator-{i}", password="!") for i in range(n_workers)
    )
    Membership.objects.bulk_create(
        Membership(project=project, user=u, role=Membership.Role.CROWD) for u in users
    )
    tokens = Token.objects.bulk_create(Token(user=u, key=Token.generate_key()) for u in users)
    with connections["default"].cursor() as cursor:
        if args.history:
            seed_history(cursor, args, project.pk, normal.pk, [u.pk for u in users])
        cursor.execute("ANALYZE")
    connections.close_all()
    return project.pk, [t.key for t in tokens]


def seed_history(cursor, args: argparse.Namespace, project_id: int, label_id: int,
                 worker_ids: list[int]) -> None:
    """Earlier days' work: ``--history`` finished items with k votes each (k workers in turn)
    and their submitted leases. A running project's tables are not empty, and ANALYZE on empty
    vote and lease tables gives plans (kept for the life of each connection) that scan them
    whole; with a history the planner sees a running project, and every per-worker read
    (progress, gold draw) meets a worker with a past."""
    n, k, first = args.history, args.k, args.items + args.gold
    cursor.execute(
        """
        INSERT INTO labeling_item (project_id, content_hash, source_name, frame_index, image,
            thumbnail, "array", original, width, height, channels, modality, metadata,
            is_holdout, is_gold, vote_count, votes_wanted, needs_review, created_at)
        SELECT %s, lpad(to_hex(g), 64, '0'), 'history-' || g, 0, 'items/bench/h.png',
               'items/bench/h.thumb.png', '', '', 28, 28, 1, '', '{}', false, false, %s, %s,
               false, now() - interval '2 days'
        FROM generate_series(%s, %s) g
        """,
        [project_id, k, k, first, first + n - 1],
    )
    cursor.execute(
        """
        WITH slots AS (
            SELECT i.id AS item_id, w.ids[1 + (i.r * %s + t) %% cardinality(w.ids)] AS worker_id
            FROM (SELECT id, row_number() OVER (ORDER BY id) AS r FROM labeling_item
                  WHERE project_id = %s AND source_name LIKE 'history-%%') i,
                 generate_series(0, %s - 1) t, (SELECT %s::int[] AS ids) w
        ), leases AS (
            INSERT INTO labeling_assignment (project_id, item_id, worker_id, status, created_at,
                                             expires_at)
            SELECT %s, item_id, worker_id, 'submitted', now() - interval '1 day',
                   now() - interval '1 day' + interval '10 minutes'
            FROM slots RETURNING id, item_id, worker_id
        )
        INSERT INTO labeling_vote (project_id, item_id, worker_id, assignment_id, kind, label_id,
            idempotency_key, source, was_gold, is_excluded, created_at)
        SELECT %s, item_id, worker_id, id, 'label', %s, 'history-' || id, 'api', false, false,
               now() - interval '1 day'
        FROM leases
        """,
        [k, project_id, k, worker_ids, project_id, project_id, label_id],
    )


# -- processes and CPU accounting ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime, stime are fields 14 and 15 (1-based); after the ")" split they are 12 and 13.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def _postgres_pids(url: str) -> list[int]:
    """The server processes serving the benchmark database (the site's persistent connections);
    other databases' backends on a shared server are left out."""
    with _admin_conn(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", [db_name(url)]
        ).fetchall()
    return [pid for (pid,) in rows]


def cpu_snapshot(server_pid: int, pg_pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of the load generator, the server (master + workers) and the
    benchmark database's PostgreSQL backends (read from /proc)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "load": usage.ru_utime + usage.ru_stime,
        "server": sum(_cpu_of(p) for p in [server_pid, *_children(server_pid)]),
        "postgres": sum(_cpu_of(p) for p in pg_pids),
    }


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if args.server == "granian":
        return [
            str(bin_dir / "granian"), "quorum.wsgi:application", "--interface", "wsgi",
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(args.workers), "--blocking-threads", str(args.threads),
            "--backlog", "2048", "--log-level", "warning", "--no-access-log",
        ]
    return [
        str(bin_dir / "gunicorn"), "quorum.wsgi:application",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(args.workers),
        "--threads", str(args.threads),
        "--worker-class", args.gunicorn_class,
        "--max-requests", "0",
        "--preload",
        # Annotators pause between cycles (--think-ms); gunicorn's 2 s default would close their
        # idle connections, which nginx in front of it keeps for 75 s by default.
        "--keep-alive", "75",
        "--timeout", "60",
        "--log-level", "warning",
    ]


def start_server(args: argparse.Namespace, env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(server_command(args, port), cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


async def wait_ready(port: int, project_id: int, token: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, asyncio.IncompleteReadError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /api/projects/{project_id}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Token {token}\r\nConnection: close\r\n\r\n".encode())
            line = await reader.readline()
            writer.close()
            if line.startswith(b"HTTP/1.1 "):
                return
        await asyncio.sleep(0.3)
    raise SystemExit("the server did not answer in time; see its log")


# -- load generator -----------------------------------------------------------------------------


@dataclass
class Stats:
    next_ms: list[float] = field(default_factory=list)
    vote_ms: list[float] = field(default_factory=list)
    cycle_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    exhausted: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> tuple[int, bytes, bool]:
    """Send pre-built request bytes; return (status, body, server keeps the connection)."""
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    keep = True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    body = await reader.readexactly(length) if length else b""
    return status, body, keep


def _assignment_id(body: bytes) -> int:
    # The next response starts with the assignment id ({"id":123,...}); json is the fallback.
    if body.startswith(b'{"id":'):
        end = body.index(b",", 6)
        return int(body[6:end])
    import json

    return int(json.loads(body)["id"])


async def annotator(index: int, port: int, project_id: int, token: str, stats: Stats,
                    record_from: float, stop_at: float, max_cycles: int, think_ms: float) -> None:
    next_req = (f"GET /api/projects/{project_id}/next/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Token {token}\r\n\r\n").encode()
    vote_head = (f"Host: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
                 "Content-Type: application/json\r\nContent-Length: ")
    key_prefix = f'{{"label":"normal","idempotency_key":"{index}-{time.time_ns()}-'
    perf = time.perf_counter
    # Looking at the image between a vote and the next request: exponential, mean think_ms.
    think = random.Random(index).expovariate if think_ms > 0 else None
    conn = None
    cycles = 0
    while cycles < max_cycles and perf() < stop_at:
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            t0 = perf()
            status, body, keep = await _request(reader, writer, next_req)
            t1 = perf()
            if status == 204:
                stats.exhausted += 1
                return
            if status != 200:
                stats.error(f"next {status}")
                await asyncio.sleep(0.05)
                continue
            if not keep:
                writer.close()
                conn = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = conn
            payload = f'{key_prefix}{cycles}"}}'.encode()
            vote_req = (f"POST /api/assignments/{_assignment_id(body)}/vote/ HTTP/1.1\r\n"
                        f"{vote_head}{len(payload)}\r\n\r\n").encode() + payload
            t2 = perf()
            status, body, keep = await _request(reader, writer, vote_req)
            t3 = perf()
            if not keep:
                writer.close()
                conn = None
            if status != 201:
                stats.error(f"vote {status}")
                continue
            cycles += 1
            if t0 >= record_from:
                stats.next_ms.append((t1 - t0) * 1000)
                stats.vote_ms.append((t3 - t2) * 1000)
                stats.cycle_ms.append((t3 - t0) * 1000)
            if think is not None:
                await asyncio.sleep(think(1000 / think_ms) if perf() < stop_at else 0)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            stats.error(type(exc).__name__)
            if conn is not None:
                conn[1].close()
            conn = None
            await asyncio.sleep(0.05)
    if conn is not None:
        conn[1].close()


async def run_level(n: int, args: argparse.Namespace, port: int, project_id: int,
                    tokens: list[str], server_pid: int) -> dict:
    stats = Stats()
    start = time.perf_counter()
    record_from = start + args.warmup
    stop_at = record_from + args.duration
    tasks = [
        asyncio.create_task(annotator(i, port, project_id, tokens[i], stats, record_from,
                                      stop_at, args.max_cycles, args.think_ms))
        for i in range(n)
    ]
    await asyncio.sleep(max(0.0, record_from - time.perf_counter()))
    # Backends are persistent (CONN_MAX_AGE) and all open after the warm-up.
    pg_pids = _postgres_pids(args.database_url)
    cpu0, t0 = cpu_snapshot(server_pid, pg_pids), time.perf_counter()
    await asyncio.gather(*tasks)
    cpu1, t1 = cpu_snapshot(server_pid, pg_pids), time.perf_counter()
    wall = t1 - t0
    return {
        "n": n,
        "wall": wall,
        "cycles": len(stats.cycle_ms),
        "stats": stats,
        "cpu": {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0},
    }


# -- report -------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print()
    lane = os.environ.get("QUORUM_CROWD_LANE", "true")
    print(f"{args.workers} workers x {args.threads} threads (granian: blocking threads; gunicorn: "
          f"{args.gunicorn_class}); "
          f"crowd lane {'off' if lane.lower() in ('0', 'false', 'no') else 'on'}; "
          f"{args.items} items + {args.gold} gold, k={args.k}, gold rate {args.gold_rate}, "
          f"history {args.history}; {args.duration:g} s per level after {args.warmup:g} s warm-up; "
          f"think time {'none (closed loop)' if args.think_ms <= 0 else f'{args.think_ms:g} ms mean'}; "
          f"load average before: {args.load_before}")
    header = (f"{'server':<9}{'N':>4} {'cycles/s':>9} {'next p50':>9} {'next p99':>9} {'vote p50':>9} "
              f"{'vote p99':>9} {'cycle p50':>10} {'cycle p99':>10} {'errors':>7}  "
              f"cpu/s load   server postgres")
    print(header)
    print("-" * len(header))
    for r in rows:
        s: Stats = r["stats"]
        errors = sum(s.errors.values())
        cpu = r["cpu"]
        print(f"{r['server']:<9}{r['n']:>4} {r['cycles'] / r['wall']:>9.1f} {pct(s.next_ms, .5):>8.1f}m "
              f"{pct(s.next_ms, .99):>8.1f}m {pct(s.vote_ms, .5):>8.1f}m {pct(s.vote_ms, .99):>8.1f}m "
              f"{pct(s.cycle_ms, .5):>9.1f}m {pct(s.cycle_ms, .99):>9.1f}m {errors:>7}  "
              f"      {cpu['load']:>4.2f} {cpu['server']:>8.2f} {cpu['postgres']:>8.2f}")
    print("latencies in ms (m); cpu/s = CPU seconds per wall second (2 cores = 2.00 in all)")
    for r in rows:
        s = r["stats"]
        if s.errors or s.exhausted:
            print(f"  {r['server']} N={r['n']}: errors {s.errors or 'none'}; "
                  f"annotators out of work: {s.exhausted}")


# -- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="10,50,100", help="Annotator counts, comma-separated.")
    parser.add_argument("--duration", type=float, default=20.0, help="Measured seconds per level.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Unmeasured seconds per level.")
    parser.add_argument("--max-cycles", type=int, default=100_000, help="Cycles per annotator at most.")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="Mean pause (exponential) after each vote; 0 = closed loop, no pause.")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--gold", type=int, default=200, help="Gold items besides --items.")
    parser.add_argument("--gold-rate", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=3, help="Votes wanted per item.")
    parser.add_argument("--history", type=int, default=20_000,
                        help="Finished items from earlier days, k votes each (0: a new project).")
    parser.add_argument("--servers", default="granian,gunicorn",
                        help="WSGI servers to measure in turn, each on a fresh database: granian "
                        "(production) and gunicorn (the peer), comma-separated.")
    parser.add_argument("--workers", type=int, default=3, help="Server worker processes.")
    parser.add_argument("--threads", type=int, default=4,
                        help="Threads per worker (granian's blocking threads, gunicorn's threads).")
    parser.add_argument("--gunicorn-class", default="gthread", help="gunicorn worker class.")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/quorum_bench")
    parser.add_argument("--reuse-db", action="store_true", help="Use the database if it exists.")
    parser.add_argument("--keep-db", action="store_true", help="Do not drop the database at the end.")
    return parser.parse_args()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def measure(server_name: str, args: argparse.Namespace, levels: list[int], env: dict[str, str],
            var_dir: Path) -> list[dict]:
    """One server from a fresh database: create and seed it, run every level, drop it."""
    args.server = server_name
    created = False
    server = None
    log = var_dir / f"{server_name}.log"
    try:
        created = create_database(args.database_url, reuse=args.reuse_db)
        t = time.perf_counter()
        project_id, tokens = seed(args, max(levels))
        print(f"{server_name}: seeded project {project_id} in {time.perf_counter() - t:.1f} s", flush=True)
        port = free_port()
        server = start_server(args, env, port, log)
        asyncio.run(wait_ready(port, project_id, tokens[0]))
        rows = []
        for n in levels:
            row = asyncio.run(run_level(n, args, port, project_id, tokens, server.pid))
            row["server"] = server_name
            rows.append(row)
            print(f"{server_name} N={n}: {row['cycles'] / row['wall']:.1f} cycles/s", flush=True)
            if server.poll() is not None:
                raise SystemExit(f"{server_name} exited; see its log")
        return rows
    finally:
        stop(server)
        if log.exists() and log.stat().st_size:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print(f"{server_name} log (last lines):\n  " + "\n  ".join(tail), file=sys.stderr)
        if created and not args.keep_db:
            with suppress(Exception):
                from django.db import connections

                connections.close_all()
            drop_database(args.database_url)


def main() -> None:
    args = parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    var_dir = Path(tempfile.mkdtemp(prefix="quorum-serving-"))
    (var_dir / "static").mkdir()  # WhiteNoise warns in every worker without it
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "quorum.settings",
        "DATABASE_URL": args.database_url,
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECRET_KEY": "serving-benchmark-only",
        "QUORUM_VAR_DIR": str(var_dir),
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    # SIGTERM ends the run like Ctrl-C, so the finally blocks always clean up.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        rows = []
        for name in servers:
            rows += measure(name, args, levels, env, var_dir)
        print_table(rows, args)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
