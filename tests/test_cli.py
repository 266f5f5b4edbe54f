"""The command line as a user runs it: in this process through ``main``, plus a few real
subprocess runs of the console entry (import time, exit codes, a whole chat)."""

import json
import subprocess
import sys

import pytest
from transformers import AutoConfig

from tests.conftest import assert_one_line_error, run_cli, run_console_script

COMMANDS = [[], ["chat"], ["variants"], ["export", "onnx"], ["quantize", "gptq"], ["bench"], ["build"], ["demo"],
            ["serve"], ["tiny"], ["tiny", "train"], ["tiny", "eval"], ["tiny", "sample"], ["tiny", "random"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_is_complete(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "glm4v-edge" in result.stdout


HEAVY = ("torch", "onnxruntime", "transformers", "gradio", "openai")
PROBE = f"""
import sys
from glm4v_edge.cli import main
for argv in (["--help"], ["variants"], ["bench", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(module for module in {HEAVY} if module in sys.modules))
"""


def test_help_and_variants_import_nothing_heavy():
    """`--help` and `variants` load no torch, onnxruntime, transformers, gradio or openai: instant."""
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().splitlines()[-1] == "[]", probe.stdout + probe.stderr
    result = run_console_script("variants")
    assert result.returncode == 0, result.stderr
    assert {"torch", "onnx-q4", "gptq-int4", "remote"} <= set(result.stdout.split())


@pytest.mark.slow  # ~8 s, a fresh interpreter importing torch (CI runs it); `variants` runs the script by default
def test_console_script_chat_and_one_line_error(tmp_path):
    sample = run_cli("tiny", "sample", "--out", str(tmp_path), "--type", "color", "--index", "2")
    expected = sample.stdout.split("expected answer: ")[1].split()[0]
    command = sample.stdout.strip().splitlines()[-1]
    question, image = command.split('"')[1], command.split("--image ")[1].split()[0]
    result = run_console_script("chat", question, "--image", image, "--greedy")
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout.split("\n\n")[-1]  # the answer follows the thinking
    assert "tokens/s" in result.stderr
    assert_one_line_error(run_console_script("chat", "Hi", "--variant", "nope"), "unknown variant(s): nope")


def test_chat_video_and_thinking_budget(tmp_path):
    sample = run_cli("tiny", "sample", "--out", str(tmp_path), "--type", "motion")
    expected = sample.stdout.split("expected answer: ")[1].split()[0]
    video = sample.stdout.split("--video ")[1].split()[0]
    result = run_cli("chat", "Which way is the shape moving?", "--video", video, "--thinking-budget", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected  # no thinking at all, just the answer


def test_tiny_eval_reports_per_type(tmp_path):
    report = tmp_path / "eval.json"
    result = run_cli("tiny", "eval", "--count", "10", "--json", str(report))
    assert result.returncode == 0, result.stderr
    for qtype in ("count", "color", "shape", "two_images", "motion", "overall"):
        assert qtype in result.stdout
    data = json.loads(report.read_text())
    assert data["samples"] == 10 and set(data["per_type"]) == {"count", "color", "shape", "two_images", "motion"}


def test_tiny_random_config_only(tmp_path):
    out = tmp_path / "medium"
    result = run_cli("tiny", "random", "--preset", "medium", "--out", str(out), "--config-only")
    assert result.returncode == 0, result.stderr
    config = AutoConfig.from_pretrained(out)
    assert config.text_config.hidden_size == 2048 and config.text_config.num_hidden_layers == 12
    assert config.text_config.vocab_size == 151552
    assert_one_line_error(run_cli("tiny", "random", "--preset", "medium", "--out", str(out), "--config-only"),
                          "not empty")


def test_unknown_variant_is_one_line():
    assert_one_line_error(run_cli("chat", "Hi", "--variant", "nope"), "unknown variant(s): nope")
