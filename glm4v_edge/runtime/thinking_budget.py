"""The thinking budget: after N thinking tokens, force ``</think><answer>``.

Stateless on purpose: the forced token is a function of the tokens generated so far, so
every variant's decode loop (torch logits processor, ONNX host loop, ...) shares it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ThinkingBudget:
    budget: int | None  # None: no limit; 0: answer straight away
    think_open: int
    think_close: int
    answer_open: int

    @classmethod
    def for_tokens(cls, budget: int | None, tokens) -> ThinkingBudget:
        """``tokens``: the checkpoint's ``SpecialTokens``."""
        return cls(budget, tokens.think_open, tokens.think_close, tokens.answer_open)

    def forced_token(self, generated: np.ndarray) -> int | None:
        """The token to force next, given the reply's tokens so far (prompt excluded)."""
        if self.budget is None:
            return None
        opened = np.flatnonzero(generated == self.think_open)
        if opened.size == 0:
            # Budget 0 opens the (empty) thinking block itself; otherwise the model decides.
            return self.think_open if self.budget == 0 and generated.size == 0 else None
        start = int(opened[0]) + 1
        closed = np.flatnonzero(generated[start:] == self.think_close)
        if closed.size:
            end = start + int(closed[0])
            just_closed_at_budget = end == generated.size - 1 and end - start >= self.budget
            return self.answer_open if just_closed_at_budget else None
        return self.think_close if generated.size - start >= self.budget else None

    def was_forced(self, generated: np.ndarray) -> bool:
        """Whether the last token of ``generated`` was forced by the budget."""
        return generated.size > 0 and self.forced_token(generated[:-1]) == int(generated[-1])
