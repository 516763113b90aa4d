"""The README's run command, embedded mode: it migrates, seeds the demo, serves, and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode

import pytest

from labeling.management.commands.seed_demo import DEMO_ACCOUNTS

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _login(base: str, username: str, password: str) -> str:
    """Log in through the login form like a browser; return the home page HTML."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    request = urllib.request.Request(
        f"{base}/login/", data=body.encode(), headers={"Referer": f"{base}/login/"}
    )
    response = opener.open(request, timeout=10)
    return response.read().decode()


@pytest.mark.slow
def test_embedded_run_serves_demo_and_stops_cleanly(tmp_path):
    if not (Path(os.environ.get("QUORUM_DATA_DIR", ROOT.parent / "shared" / "data"))).exists():
        pytest.skip("the demo needs the shared data folder")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(QUORUM_VAR_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "run.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "quorum.cli", "run", "--port", str(port), "--concurrency", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{base}/login/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the site never answered"
                time.sleep(1)
        output = (tmp_path / "run.log").read_text()
        for username, password, role, _staff in DEMO_ACCOUNTS:
            assert f"{username:<8} {password:<14} {role}" in output
            home = _login(base, username, password)
            assert f'data-testid="username">{username}<' in home
            assert "Blood smears: white-cell type" in home
        assert f"http://127.0.0.1:{port}/" in output
        worker_started = re.search(r"embedded@\S+ ready", output)
        deadline = time.monotonic() + 60
        while not worker_started and time.monotonic() < deadline:
            time.sleep(1)
            worker_started = re.search(r"embedded@\S+ ready", (tmp_path / "run.log").read_text())
        assert worker_started, "the Celery worker did not start"
        assert "beat: Starting" in (tmp_path / "run.log").read_text()  # the sweep's scheduler
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    output = (tmp_path / "run.log").read_text()
    assert process.returncode == 0, output[-3000:]
    assert "Stopped." in output


def test_pyproject_builds_without_setuptools_warnings():
    """The install step of the run command printed setuptools' deprecation box three times for
    the licence as a TOML table; the SPDX string form (setuptools>=77) says nothing."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message).splitlines()[0] for w in caught] == []
    assert dist.metadata.license_expression == "MIT"


def test_seed_demo_import_bar_follows_the_import_to_its_total(capsys):
    import logging

    from labeling.management.commands.seed_demo import _import_bar

    console = logging.StreamHandler(sys.stderr)  # as settings.LOGGING's, on the captured stderr
    root = logging.getLogger()
    root.addHandler(console)
    try:
        with _import_bar("demo images") as progress:
            for done in range(1, 4):
                progress(done, 3, f"image{done}.png")
                logging.getLogger("tests.seed").warning("image%d read", done)
    finally:
        root.removeHandler(console)
    err = capsys.readouterr().err
    states = [(int(n), int(total)) for n, total in re.findall(r"(\d+)/(\d+) \[", err)]
    assert states[-1] == (3, 3) and all(n <= total for n, total in states)
    for segment in re.split(r"[\r\n]", err):
        assert not ("importing demo images" in segment and "read" in segment), segment
