"""Real local servers for tests: a free loopback port, a CLI server in a subprocess, bounded waits."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

from glm4v_edge.bench.local_server import CliServer, free_port

__all__ = ["ServeProcess", "free_port", "wait_until_up"]


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


ServeProcess = CliServer  # ``glm4v-edge serve ARGS`` on a free port, started at once
