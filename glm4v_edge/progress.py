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
