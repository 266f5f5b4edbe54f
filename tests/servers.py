"""Real local servers for tests: a free loopback port, a CLI server in a subprocess, bounded waits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen | None = None, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up in {timeout_s:.0f} s")


@contextmanager
def running_server(*args: str) -> Iterator[str]:
    """``glm4v-edge serve ARGS`` on a free port; yields its OpenAI base URL, stops it afterwards."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
    process = subprocess.Popen([sys.executable, "-m", "glm4v_edge", *args, "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        try:
            wait_until_up(f"http://127.0.0.1:{port}/health", process)
        except (RuntimeError, TimeoutError) as error:
            log.seek(0)
            raise RuntimeError(f"{error}; its output:\n{log.read()[-4000:]}") from None
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
