import numpy as np
import pytest

from glm4v_edge.runtime.thinking_budget import ThinkingBudget

THINK, END, ANSWER = 100, 101, 102


def forced(budget, generated):
    return ThinkingBudget(budget, THINK, END, ANSWER).forced_token(np.asarray(generated, dtype=np.int64))


def test_no_budget_never_forces():
    assert forced(None, []) is None
    assert forced(None, [THINK] + [5] * 1000) is None


def test_budget_zero_forces_an_empty_thinking_block():
    assert forced(0, []) == THINK
    assert forced(0, [THINK]) == END
    assert forced(0, [THINK, END]) == ANSWER
    assert forced(0, [THINK, END, ANSWER]) is None
    assert forced(0, [THINK, END, ANSWER, 7, 8]) is None


@pytest.mark.parametrize("budget", [1, 3, 10])
def test_budget_n_closes_thinking_after_n_tokens(budget):
    generated = [THINK]
    assert forced(budget, []) is None  # the model opens thinking itself
    for _ in range(budget):
        assert forced(budget, generated) is None
        generated.append(5)
    assert forced(budget, generated) == END
    assert forced(budget, generated + [END]) == ANSWER
    assert forced(budget, generated + [END, ANSWER, 9]) is None


def test_model_closing_early_is_left_alone():
    # The model ends its thinking by itself before the budget: nothing is forced.
    assert forced(10, [THINK, 5, 5, END]) is None
    assert forced(10, [THINK, 5, 5, END, 7]) is None


def test_was_forced():
    budget = ThinkingBudget(2, THINK, END, ANSWER)
    assert budget.was_forced(np.array([THINK, 5, 5, END]))
    assert budget.was_forced(np.array([THINK, 5, 5, END, ANSWER]))
    assert not budget.was_forced(np.array([THINK, 5]))
