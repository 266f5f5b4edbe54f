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


@pytest.fixture(scope="session")
def rambling_model(tmp_path_factory) -> Path:
    """The tiny architecture with random weights whose end-of-turn logits are zero, so greedy
    decoding never ends a reply: a generation that only max_new_tokens or a stop ends."""
    import json

    from safetensors.torch import load_file, save_file

    from glm4v_edge.tiny.random_checkpoint import write_random_checkpoint

    out = write_random_checkpoint("tiny", tmp_path_factory.mktemp("rambling") / "model", dtype="fp32")
    end_ids = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    for shard in out.glob("*.safetensors"):
        weights = load_file(shard)
        if "lm_head.weight" in weights:
            weights["lm_head.weight"][end_ids] = 0.0
            save_file(weights, shard, metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def rambling_server(rambling_model):
    """`glm4v-edge serve` on the rambling model, in its own process: yields the /v1 base URL."""
    from tests.servers import running_server

    with running_server("serve", "--model", str(rambling_model)) as url:
        yield url
