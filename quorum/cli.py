"""``quorum`` console entry point.

``quorum run`` is the embedded mode: migrate, seed the demo, then start the web server and one
Celery worker (both queues) as child processes; Ctrl-C stops both. With ``DATABASE_URL`` and
``CELERY_BROKER_URL`` set, the same command runs against PostgreSQL and Redis.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def _stop(processes: list[subprocess.Popen], timeout: float = 20.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quorum.settings")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(_manage("migrate", "--noinput", "-v", "0"), check=True, env=env)
    if not args.no_demo:
        size = [] if args.demo_items is None else [f"--max-items={args.demo_items}"]
        subprocess.run(_manage("seed_demo", *size), check=True, env=env)

    processes: list[subprocess.Popen] = []
    if not args.no_worker:
        # -B: the worker also runs beat, whose sweep fails runs a dead worker left behind
        schedule = Path(os.environ.get("QUORUM_VAR_DIR", ROOT / "var")) / "celerybeat-schedule"
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "quorum", "worker", "-Q", "default,gpu",
                 "--concurrency", str(args.concurrency), "--loglevel", "INFO",
                 "--without-mingle", "--without-gossip", "--hostname", "embedded@%h",
                 "-B", "--schedule", str(schedule)],
                cwd=ROOT, env=env, start_new_session=True,
            )
        )
    processes.append(
        subprocess.Popen(
            _manage("runserver", "--noreload", "--skip-checks", f"{args.host}:{args.port}"),
            cwd=ROOT, env=env, start_new_session=True,
        )
    )
    print(f"\nQuorum is starting at http://{args.host}:{args.port}/  (Ctrl-C stops it)\n", flush=True)

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            if any(p.poll() is not None for p in processes):
                print("A Quorum process exited; stopping the others.", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        print("\nStopping the web server and the worker...", flush=True)
        _stop(processes)
        print("Stopped.", flush=True)
    return 0 if stopping else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quorum", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="Run the site and a worker (embedded mode by default).")
    run_parser.add_argument("--host", default=os.environ.get("QUORUM_HOST", "127.0.0.1"))
    run_parser.add_argument("--port", type=int, default=int(os.environ.get("QUORUM_PORT", "8000")))
    run_parser.add_argument("--no-demo", action="store_true", help="Do not seed the demo projects.")
    run_parser.add_argument(
        "--demo-items", type=int, metavar="N",  # seed_demo refuses fewer than its minimum
        help="At most N images in each demo project (a smaller demo that seeds faster).",
    )
    run_parser.add_argument("--no-worker", action="store_true", help="Start no Celery worker.")
    run_parser.add_argument("--concurrency", type=int, default=1, help="Worker processes.")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
