"""Atomic writes: a folder or file appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from glm4v_edge.errors import Glm4vEdgeError


def check_output_folder(target: str | Path, overwrite: bool) -> None:
    """Refuse to write into an existing non-empty folder unless asked to replace it."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise Glm4vEdgeError(f"output path exists and is not a folder: {target}")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise Glm4vEdgeError(f"output folder is not empty: {target} (pass --overwrite to replace it)")


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside ``target``; rename it into place only if the block succeeds.

    An existing non-empty ``target`` is refused unless ``overwrite``; then it is replaced
    only after the new folder is complete.
    """
    target = Path(target)
    check_output_folder(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
