"""Shared fixtures: the embedded model loaded once, one build of every artifact per session, and
the CLI run in this process (a few smoke tests run the real console script in a subprocess)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tests import build_artifacts

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("COLUMNS", "200")  # rich tables and error lines unwrapped in captured output
# One OpenMP thread for torch here and in every child: the background builds share the 2 cores,
# and OpenMP's waiting threads spin (measured: the suite used ~20 % more CPU, and more wall time).
os.environ.setdefault("OMP_NUM_THREADS", "1")

ONNX_DTYPES = list(build_artifacts.ONNX_DTYPES)
GPTQ_CALIBRATION = build_artifacts.GPTQ_CALIBRATION


class Background:
    """A slow build in its own process, started at collection (or once the build it needs is
    done) and waited for by the first test that needs it, so the tests that need nothing go on
    meanwhile (2 cores, mostly one busy)."""

    def __init__(self, command: list[str], env: dict[str, str], out: Path, after: Background | None = None):
        self.out = out
        self.log = tempfile.TemporaryFile(mode="w+")
        # One thread: the builds share 2 cores with the tests; more threads would only spin.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
        self.process: subprocess.Popen | None = None
        self.failure: str | None = None

        def start():
            if after is not None:
                try:
                    after.wait()
                except RuntimeError as error:
                    self.failure = str(error)
                    return
            self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                            cwd=Path(__file__).resolve().parents[1])

        self.starter = threading.Thread(target=start, daemon=True)
        self.starter.start()

    def wait(self) -> Path:
        self.starter.join(timeout=1800)
        if self.failure or self.process is None:
            raise RuntimeError(f"background build of {self.out.name} not started: {self.failure}")
        if self.process.wait(timeout=1800) != 0:
            raise RuntimeError(f"background build of {self.out.name} failed:\n{self.output()[-4000:]}")
        return self.out

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()


# fixture -> (command, extra environment) for a build writing into its own folder OUT
BACKGROUND = {
    "artifacts": lambda out: ([sys.executable, "-m", "tests.build_artifacts", str(out)], {}),
    # The benchmark end to end on that build, started when it is done (see AFTER).
    "bench_run": lambda out: ([sys.executable, "-m", "tests.bench_run", str(BUILD_ROOT / "artifacts"), str(out)], {}),
    "in_memory_onnx": lambda out: ([sys.executable, "-m", "tests.reference_export", str(out)], {}),
    # The GPU script's own steps on CPU with the embedded model (tests/test_gpu_script.py).
    "gpu_script_run": lambda out: (["bash", "benchmarks/gpu/run.sh"], {
        "DEVICE": "cpu", "PRESET": "embedded", "RUNS": "1", "OUT": str(out / "results"), "WORK": str(out / "work"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}),
}
AFTER = {"bench_run": "artifacts"}  # a build that starts once another is done
BUILDS: dict[str, Background] = {}
BUILD_ROOT = Path(tempfile.mkdtemp(prefix="glm4v-edge-tests-"))


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: build only what the selected tests use
def pytest_collection_modifyitems(session, config, items):
    from tests.servers import ServeProcess

    used = {name for item in items for name in getattr(item, "fixturenames", ())}
    used |= {AFTER[name] for name in used if name in AFTER}
    for name in sorted(used & set(BACKGROUND), key=lambda name: name in AFTER):
        after = BUILDS[AFTER[name]] if name in AFTER else None
        BUILDS[name] = Background(*BACKGROUND[name](BUILD_ROOT / name), BUILD_ROOT / name, after)
    for name in sorted(used & set(SERVER_ARGS)):
        SERVERS[name] = ServeProcess(*SERVER_ARGS[name]())
    # The tests that need a background build run last, those needing a build that waits for
    # another after them (stable sort: file order kept otherwise).
    def order(item) -> tuple[bool, bool]:
        needs = set(getattr(item, "fixturenames", ())) & set(BACKGROUND)
        return bool(needs), bool(needs & set(AFTER))

    items.sort(key=order)


def pytest_sessionfinish(session, exitstatus):
    for build in BUILDS.values():
        build.kill()
    for server in SERVERS.values():
        server.stop()
    shutil.rmtree(BUILD_ROOT, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def contained_temp_dir(tmp_path_factory):
    """gradio_client leaves an empty folder in the temp dir per downloaded file (hundreds per
    run): the tests' temp dir goes inside BUILD_ROOT, which the session removes. pytest's own
    tmp_path root is fixed first, so failed tests' folders stay where pytest keeps them."""
    tmp_path_factory.getbasetemp()
    tempfile.tempdir = str(BUILD_ROOT / "tmp")
    os.makedirs(tempfile.tempdir, exist_ok=True)
    yield
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def tiny_variant():
    from glm4v_edge.runtime.registry import load_variant

    return load_variant("torch-fp32")


@pytest.fixture(scope="session")
def tiny_processor(tiny_variant):
    return tiny_variant.processor


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The embedded model built once: every ONNX precision and a GPTQ int4 checkpoint, one manifest
    (tests.build_artifacts). Tests that damage artifacts work on a copy."""
    return BUILDS["artifacts"].wait()


@pytest.fixture(scope="session")
def bench_run() -> tuple[Path, str]:
    """tests.bench_run's folder (the broken build's copy, with its bench/ results) and its output."""
    return BUILDS["bench_run"].wait(), BUILDS["bench_run"].output()


@pytest.fixture(scope="session")
def gpu_script_run() -> Path:
    """benchmarks/gpu/run.sh run on CPU with the embedded model: its folder (results/, work/)."""
    return BUILDS["gpu_script_run"].wait()


@pytest.fixture(scope="session")
def in_memory_onnx() -> Path:
    """The in-memory export the streaming export replaced (tests.reference_export), for equality."""
    return BUILDS["in_memory_onnx"].wait() / "onnx"


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


def write_rambling_model(out: Path) -> Path:
    """The tiny architecture with random weights whose end-of-turn logits are zero, so greedy
    decoding never ends a reply: a generation that only max_new_tokens or a stop ends."""
    import json

    from safetensors.torch import load_file, save_file

    from glm4v_edge.tiny.random_checkpoint import write_random_checkpoint

    write_random_checkpoint("tiny", out, dtype="fp32")
    end_ids = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    for shard in out.glob("*.safetensors"):
        weights = load_file(shard)
        if "lm_head.weight" in weights:
            weights["lm_head.weight"][end_ids] = 0.0
            save_file(weights, shard, metadata={"format": "pt"})
    return out


# `glm4v-edge serve` processes, started at collection like the builds (their start-up overlaps
# the first tests): the embedded model, and the rambling model.
SERVER_ARGS = {
    "tiny_server": lambda: ["--threads", "1"],
    "rambling_server": lambda: ["--threads", "1", "--model", str(write_rambling_model(BUILD_ROOT / "rambling"))],
}
SERVERS = {}


@pytest.fixture(scope="session")
def tiny_server() -> str:
    """`glm4v-edge serve` on the embedded model (torch), in its own process: the /v1 base URL."""
    return SERVERS["tiny_server"].url()


@pytest.fixture(scope="session")
def rambling_server() -> str:
    """`glm4v-edge serve` on the rambling model, in its own process: the /v1 base URL."""
    return SERVERS["rambling_server"].url()
