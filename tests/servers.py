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


class ServeProcess:
    """``glm4v-edge serve ARGS`` on a free port, started at once; ``url()`` waits until it answers."""

    def __init__(self, *args: str):
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
        self.process = subprocess.Popen([sys.executable, "-m", "glm4v_edge", *args, "--port", str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env)

    def url(self) -> str:
        """The server's OpenAI base URL, once its /health answers."""
        try:
            wait_until_up(f"http://127.0.0.1:{self.port}/health", self.process)
        except (RuntimeError, TimeoutError) as error:
            self.log.seek(0)
            raise RuntimeError(f"{error}; its output:\n{self.log.read()[-4000:]}") from None
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
