"""The command line as a user runs it."""

import json

import pytest
from transformers import AutoConfig

from tests.conftest import run_cli

COMMANDS = [[], ["chat"], ["variants"], ["tiny"], ["tiny", "train"], ["tiny", "eval"], ["tiny", "sample"],
            ["tiny", "random"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_is_complete(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert "glm4v-edge" in result.stdout or "python -m glm4v_edge" in result.stdout


def test_chat_answers_a_generated_image(tmp_path):
    sample = run_cli("tiny", "sample", "--out", str(tmp_path), "--type", "color", "--index", "2")
    assert sample.returncode == 0, sample.stderr
    expected = sample.stdout.split("expected answer: ")[1].split()[0]
    command = sample.stdout.strip().splitlines()[-1]
    question = command.split('"')[1]
    image = command.split("--image ")[1].split()[0]
    result = run_cli("chat", question, "--image", image, "--greedy")
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout.split("\n\n")[-1]  # the answer follows the thinking
    assert "tokens/s" in result.stderr


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
    refused = run_cli("tiny", "random", "--preset", "medium", "--out", str(out), "--config-only")
    assert refused.returncode == 1 and "not empty" in refused.stderr


def test_unknown_variant_is_one_line():
    result = run_cli("chat", "Hi", "--variant", "nope")
    assert result.returncode == 1 and result.stderr.strip().startswith("error: unknown variant 'nope'")
