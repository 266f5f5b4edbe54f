"""The committed tiny model answers as it did when it was committed: a golden check of exact
reply tokens on 25 held-out questions (default run), and its quality bar on all 500 (slow)."""

import json
from pathlib import Path

import pytest

from glm4v_edge import shapes
from glm4v_edge.bench.task_accuracy import evaluate
from glm4v_edge.runtime.variant import Sampling, collect

GOLDEN = Path(__file__).parent / "golden" / "tiny-heldout-replies.json"


def greedy_ids(variant, index: int) -> list[int]:
    sample = shapes.make_sample(shapes.HELDOUT_SPLIT, index)
    return collect(variant.generate(sample.messages(), max_new_tokens=64, sampling=Sampling.greedy())).token_ids


def test_golden_replies_token_for_token(tiny_variant):
    golden = json.loads(GOLDEN.read_text())
    assert len(golden["replies"]) == 25
    for index, expected in golden["replies"].items():
        assert greedy_ids(tiny_variant, int(index)) == expected, f"held-out question {index}"


@pytest.fixture(scope="module")
def report(tiny_variant):
    return evaluate(tiny_variant, 500)


@pytest.mark.slow
def test_overall_exact_match_at_least_90_percent(report):
    assert len(report.outcomes) == 500
    assert report.accuracy() >= 0.90, report.to_dict()


@pytest.mark.slow
def test_every_question_type_at_least_80_percent(report):
    per_type = report.per_type()
    assert set(per_type) == set(shapes.QUESTION_TYPES)
    for qtype, (right, total) in per_type.items():
        assert total == 100 and right / total >= 0.80, (qtype, right)


@pytest.mark.slow
def test_budget_zero_still_mostly_right(tiny_variant):
    # Trained with 10 % empty-thinking targets, the model answers without thinking too.
    assert evaluate(tiny_variant, 50, thinking_budget=0).accuracy() >= 0.6
