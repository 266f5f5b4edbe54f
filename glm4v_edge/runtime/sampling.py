"""Next-token choice shared by every variant: transformers' logits processors, the thinking
budget as one more processor, and a stop signal.

The torch variant hands these to ``model.generate``; host-driven loops (ONNX) call
``LogitsChooser`` on each step's logits, so both choose tokens the same way.
"""

from __future__ import annotations

import copy
import threading

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from glm4v_edge.runtime.thinking_budget import ThinkingBudget
from glm4v_edge.runtime.variant import Sampling


def generation_settings(
    base: GenerationConfig, sampling: Sampling | None, max_new_tokens: int, pad_token_id: int
) -> GenerationConfig:
    """The checkpoint's generation config with the caller's overrides applied."""
    config = copy.deepcopy(base)
    config.update(**(sampling or Sampling()).overrides())
    if not config.do_sample:  # greedy: sampling knobs would only raise warnings
        config.temperature = config.top_k = config.top_p = None
    config.max_new_tokens = max_new_tokens
    config.pad_token_id = pad_token_id
    return config


class ForceBudgetTokens(LogitsProcessor):
    """Applies the thinking budget: a forced token gets all the probability mass."""

    def __init__(self, budget: ThinkingBudget, prompt_length: int):
        self.budget = budget
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            forced = self.budget.forced_token(input_ids[row, self.prompt_length:].cpu().numpy())
            if forced is not None:
                scores[row] = torch.finfo(scores.dtype).min
                scores[row, forced] = 0.0
        return scores


class StopWhenSet(StoppingCriteria):
    def __init__(self, *events: threading.Event | None):
        self.events = [e for e in events if e is not None]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class LogitsChooser:
    """The next token from a step's logits, as ``generate`` with this config would choose it."""

    def __init__(self, config: GenerationConfig, budget: ThinkingBudget, prompt_length: int, seed: int | None):
        processors = []
        if config.repetition_penalty not in (None, 1.0):
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.do_sample:
            if config.temperature not in (None, 1.0):
                processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                processors.append(TopKLogitsWarper(config.top_k))
            if config.top_p not in (None, 1.0):
                processors.append(TopPLogitsWarper(config.top_p))
        processors.append(ForceBudgetTokens(budget, prompt_length))
        self.processors = LogitsProcessorList(processors)
        self.do_sample = bool(config.do_sample)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.LongTensor:
        """``input_ids`` (batch, prompt + generated), ``logits`` (batch, vocab) -> (batch,) ids."""
        scores = self.processors(input_ids, logits.float())
        if not self.do_sample:
            return scores.argmax(dim=-1)
        probabilities = torch.softmax(scores, dim=-1)
        return torch.multinomial(probabilities, 1, generator=self.generator).squeeze(1)
