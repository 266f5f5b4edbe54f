"""How a long step tells its caller what it is doing: it states its own number of steps,
then announces each as it starts. The CLI draws rich progress bars from this; library callers
pass nothing and hear nothing."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, label: str, total: int) -> None:
        """A task of ``total`` steps begins (a new bar)."""

    def step(self, status: str) -> None:
        """The task's next step begins: the previous one is done."""

    def written(self, done: int, total: int) -> None:
        """Bytes of the current step's output written so far, of ``total``."""

    def warn(self, message: str) -> None:
        """Something the user should read, that does not stop the work."""


class Silent:
    """A ``Progress`` that reports nothing."""

    def start(self, label: str, total: int) -> None:
        pass

    def step(self, status: str) -> None:
        pass

    def written(self, done: int, total: int) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


SILENT = Silent()


class LatestLine:
    """A ``Progress`` that keeps one line saying where the work is (the demo shows it while a
    variant downloads and loads)."""

    def __init__(self) -> None:
        self.label, self.status, self.bytes, self.total, self.done = "", "", "", 0, 0

    @property
    def line(self) -> str:
        count = f": {self.done}/{self.total}" if self.total else ""
        return " · ".join(part for part in (self.label + count, self.status, self.bytes) if part)

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.status, self.bytes = label, total, 0, "", ""

    def step(self, status: str) -> None:
        self.done, self.status, self.bytes = self.done + 1, status, ""

    def written(self, done: int, total: int) -> None:
        self.bytes = f"{done / 1e6:.0f} of {total / 1e6:.0f} MB"

    def warn(self, message: str) -> None:
        self.status = message
