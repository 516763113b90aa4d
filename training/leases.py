"""Who holds a training run, and whether that holder is still alive.

A worker that trains a run writes itself into it as the run's *holder*: ``host/pid/start``, the
start being the process's start time read from ``/proc`` so that a reused pid is not taken for
the holder. It also takes a short *lease* (``lease_until``) that a daemon thread in the same
process renews every third of ``LEASE``; the thread dies with the process. Whether a holder
lives is then known from what dies with it, not from the age of a timestamp alone:

* the holder is this very process: it lives while this process still trains the run;
* it is on this host: it lives while its process exists and its lease runs (a process whose
  lease ran out has stopped training the run, or is wedged);
* it is on another host: it lives while its lease runs, so a claimant waits at most ``LEASE``.

Each renewal is a conditional write (``holder`` must still be this process), so a holder that
was presumed dead and replaced finds out at its next renewal and stops (a fencing token).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from training.models import TrainingRun

logger = logging.getLogger(__name__)

LEASE = timedelta(seconds=settings.QUORUM_TRAINING_LEASE_SECONDS)

_held: set[int] = set()  # runs this process is training now
_held_lock = threading.Lock()


class LeaseLost(Exception):
    """Another worker took the run over (this one was presumed dead); stop without writing."""


def process_start(pid: int) -> str:
    """The process's start time in clock ticks after boot ('' if unknown, or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
    return "" if fields[0] in ("Z", "X") else fields[19]


def this_process() -> str:
    """This process as a holder: ``host/pid/start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{process_start(pid)}"


def _process_exists(pid: int, start: str) -> bool:
    if Path("/proc/self/stat").is_file():
        return bool(start) and process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(run: TrainingRun, now: datetime | None = None) -> bool | None:
    """True: the run's holder lives; False: it is gone; None: no holder, or a holder on another
    host whose lease still runs (nothing here can tell before the lease ends)."""
    if not run.holder:
        return None
    now = now or timezone.now()
    host, pid, start = run.holder.rsplit("/", 2)
    lease_runs = run.lease_until is not None and run.lease_until > now
    if run.holder == this_process():
        with _held_lock:
            return run.pk in _held
    if host == socket.gethostname():
        return lease_runs and _process_exists(int(pid), start)
    return None if lease_runs else False


def expiry(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) + LEASE


class Lease:
    """This process's hold on one run, renewed by a daemon thread until :meth:`release`.

    ``renew=False`` keeps the hold without the thread: inside a transaction that is still open
    (a test's), another connection can neither see the claim nor update the row without
    waiting for that transaction, so the caller renews from its own connection instead.
    """

    def __init__(self, run_id: int, holder: str, *, renew: bool = True) -> None:
        self.run_id = run_id
        self.holder = holder
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = (
            threading.Thread(target=self._renew_until_stopped, name=f"lease-run-{run_id}",
                             daemon=True)
            if renew
            else None
        )

    def __enter__(self) -> Lease:
        with _held_lock:
            _held.add(self.run_id)
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        with _held_lock:
            _held.discard(self.run_id)
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=LEASE.total_seconds())

    @property
    def renews_here(self) -> bool:
        """No thread renews this lease: the caller must, from its own connection."""
        return self._thread is None

    def renew(self) -> None:
        """Extend the lease once from the calling thread; sets ``lost`` if the run is not ours."""
        now = timezone.now()
        updated = TrainingRun.objects.filter(
            pk=self.run_id, holder=self.holder, status=TrainingRun.Status.RUNNING
        ).update(lease_until=expiry(now), heartbeat_at=now)
        if not updated:
            self.lost.set()

    def check(self) -> None:
        """Raise :class:`LeaseLost` once a renewal found the run held by someone else."""
        if self.lost.is_set():
            raise LeaseLost(f"training run {self.run_id} is held by another worker now")

    def _renew_until_stopped(self) -> None:
        try:
            while not self._stop.wait(LEASE.total_seconds() / 3):
                try:
                    self.renew()
                except DatabaseError as error:  # a blip: the lease still has two renewals left
                    logger.warning("renewing the lease of run %s failed: %s", self.run_id, error)
                    connection.close()
                if self.lost.is_set():
                    logger.warning("training run %s was taken over; stopping", self.run_id)
                    return
        finally:
            connection.close()  # this thread's own connection
