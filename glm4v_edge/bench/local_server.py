"""A ``glm4v-edge serve`` (or ``demo``) process on a free loopback port, for measurements and tests:
started at once, waited for with a bound, its memory read from /proc, stopped however it ended;
and the sampler that follows a process's memory while it runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

SAMPLE_S = 0.05  # how often a PeakSampler reads


class PeakSampler:
    """The highest figure ``read`` gives (a process's memory in MiB; None once it is gone), read
    every ``SAMPLE_S`` on a thread: ``peak()`` since the last ``reset()``; ``stop()`` ends it."""

    def __init__(self, read: Callable[[], float | None]):
        self.read, self.highest, self.done = read, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.is_set():
            self.highest = max(self.highest, self.read() or 0.0)
            self.done.wait(SAMPLE_S)

    def reset(self) -> None:
        self.highest = self.read() or 0.0

    def peak(self) -> float:
        return max(self.highest, self.read() or 0.0)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.highest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status_mib(pid: int, field: str) -> float | None:
    """A memory figure (VmRSS, VmHWM) of process ``pid`` in MiB, from /proc (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class CliServer:
    """``glm4v-edge ARGS --port P`` in a subprocess; ``url()`` waits until /health answers."""

    def __init__(self, *args: str, command: str = "serve"):
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        self.args = [command, *args, "--port", str(self.port)]
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "glm4v_edge", *self.args], stdout=self.log,
                                        stderr=subprocess.STDOUT, text=True, env=env)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, timeout_s: float = 120.0) -> str:
        """The server's OpenAI base URL, once its /health answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}; its output:\n"
                                   f"{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5):
                    return self.base + "/v1"
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f"{self.base}/health did not answer in {timeout_s:.0f} s; its output:\n"
                           f"{self.output()[-4000:]}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def memory_mib(self, field: str = "VmRSS") -> float | None:
        return status_mib(self.process.pid, field)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
