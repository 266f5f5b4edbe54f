"""Shared fixtures: the embedded model loaded once, one build of every artifact per session, and
the CLI run in this process (a few smoke tests run the real console script in a subprocess)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("COLUMNS", "200")  # rich tables and error lines unwrapped in captured output

ONNX_DTYPES = ["fp32", "fp16", "q4", "q4f16", "int8"]
GPTQ_CALIBRATION = 64


@pytest.fixture(scope="session")
def tiny_variant():
    from glm4v_edge.runtime.registry import load_variant

    return load_variant("torch-fp32")


@pytest.fixture(scope="session")
def tiny_processor(tiny_variant):
    return tiny_variant.processor


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """The embedded model built once: every ONNX precision and a GPTQ int4 checkpoint, one manifest.
    Tests that damage artifacts work on a copy."""
    from glm4v_edge.export.onnx_export import export_onnx
    from glm4v_edge.export.settings import ExportSettings
    from glm4v_edge.quant.gptq import quantize_gptq
    from glm4v_edge.quant.settings import GptqSettings

    out = tmp_path_factory.mktemp("build") / "tiny"
    export_onnx(None, out, ExportSettings(tuple(ONNX_DTYPES)))
    quantize_gptq(None, out / "gptq-int4", GptqSettings(calibration=GPTQ_CALIBRATION))
    return out


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``glm4v-edge ARGS`` in this process (its real ``main``, error handling included), with
    stdout and stderr captured: what a user would see, without a torch import per call."""
    from glm4v_edge.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or Path.cwd()):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def run_console_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real console entry in a subprocess, as a user runs it (for the few smoke tests)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "glm4v_edge", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


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
