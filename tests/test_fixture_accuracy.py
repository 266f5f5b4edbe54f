"""The committed tiny model meets its quality bar on the held-out split."""

import pytest

from glm4v_edge.tiny import task
from glm4v_edge.tiny.eval import evaluate


@pytest.fixture(scope="module")
def report(tiny_variant):
    return evaluate(tiny_variant, 500)


def test_overall_exact_match_at_least_90_percent(report):
    assert len(report.outcomes) == 500
    assert report.accuracy() >= 0.90, report.to_dict()


def test_every_question_type_at_least_80_percent(report):
    per_type = report.per_type()
    assert set(per_type) == set(task.QUESTION_TYPES)
    for qtype, (right, total) in per_type.items():
        assert total == 100 and right / total >= 0.80, (qtype, right)


def test_budget_zero_still_mostly_right(tiny_variant):
    # Trained with 10 % empty-thinking targets, the model answers without thinking too.
    assert evaluate(tiny_variant, 50, thinking_budget=0).accuracy() >= 0.6
