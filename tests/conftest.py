"""Shared fixtures: the embedded model loaded once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


@pytest.fixture(scope="session")
def tiny_variant():
    from glm4v_edge.runtime import load_variant

    return load_variant("torch-fp32")


@pytest.fixture(scope="session")
def tiny_processor(tiny_variant):
    return tiny_variant.processor


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real console script in a subprocess, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "glm4v_edge", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
