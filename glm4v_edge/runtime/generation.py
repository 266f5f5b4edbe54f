"""What every variant's ``generate`` shares: the prompt batch, the generation config with the
caller's overrides, transformers' logits processors plus the thinking budget, token choice, and
the stream of ``TokenEvent``s.

The torch variant hands the processors to ``model.generate``; host-driven loops (ONNX) build
the same list from the same transformers code and choose tokens as ``generate`` does, so a
checkpoint's generation_config means the same everywhere and one seed samples the same tokens.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers.decoders import DecodeStream
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers.generation.utils import GenerationMixin

from glm4v_edge.dims import context_length, merge_size
from glm4v_edge.runtime.inputs import build_batch
from glm4v_edge.runtime.prompt_cache import PromptReuse
from glm4v_edge.runtime.thinking_budget import ThinkingBudget
from glm4v_edge.runtime.variant import Sampling, TokenEvent
from glm4v_edge.thinking import ReplyParser


def generation_settings(
    base: GenerationConfig, sampling: Sampling | None, max_new_tokens: int, pad_token_id: int
) -> GenerationConfig:
    """The checkpoint's generation config with the caller's overrides applied."""
    config = copy.deepcopy(base)
    config.update(**(sampling or Sampling()).overrides())
    if not config.do_sample:  # greedy: sampling knobs would only raise warnings
        config.temperature = config.top_k = config.top_p = config.min_p = None
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


class _HostModel:
    """The little of a model that transformers' logits-processor builder reads (its config),
    so a loop outside torch gets exactly the list ``generate`` would build."""

    _get_logits_processor = GenerationMixin._get_logits_processor
    _merge_criteria_processor_list = GenerationMixin._merge_criteria_processor_list
    _prepare_special_tokens = GenerationMixin._prepare_special_tokens

    def __init__(self, config):
        self.config = config
        self.device = torch.device("cpu")


def host_logits_processors(model_config, config: GenerationConfig, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor, extra: LogitsProcessorList) -> LogitsProcessorList:
    """transformers' processors for ``config`` (repetition penalty, temperature, top-k/p, min-p,
    ...) followed by ``extra``, as ``generate`` builds them for this prompt."""
    config = copy.deepcopy(config)
    host = _HostModel(model_config)
    host._prepare_special_tokens(config, True, device="cpu", batch_size=input_ids.shape[0])
    return host._get_logits_processor(
        generation_config=config, input_ids_seq_length=input_ids.shape[1], encoder_input_ids=input_ids,
        logits_processor=extra, device="cpu", model_kwargs={"attention_mask": attention_mask},
    )


def choose_tokens(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """The next token per row from processed scores, as ``generate`` picks it (torch's global RNG)."""
    if do_sample:
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    return torch.argmax(scores, dim=-1)


class ReplyStream:
    """Generated token ids -> ``TokenEvent``s: decoded incrementally (tokenizers' ``DecodeStream``),
    split by the thinking parser, timed from ``started``. Every variant yields through one."""

    def __init__(self, tokenizer, budget: ThinkingBudget, started: float, prompt_tokens: int, cached_tokens: int = 0):
        self.tokenizer = tokenizer.backend_tokenizer
        self.decoder = DecodeStream(skip_special_tokens=False)  # special tokens carry <think> and boxes
        self.parser = ReplyParser()
        self.budget = budget
        self.started = started
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.generated: list[int] = []

    def event(self, token_id: int) -> TokenEvent:
        self.generated.append(token_id)
        text = self.decoder.step(self.tokenizer, token_id) or ""  # None while a character is incomplete
        return TokenEvent(
            token_id=token_id,
            text=text,
            pieces=tuple(self.parser.feed(text)),
            elapsed_s=time.perf_counter() - self.started,
            forced=self.budget.was_forced(np.asarray(self.generated)),
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
        )


@dataclass
class GenerationPlan:
    """One request, prepared the same way for every local variant."""

    batch: dict  # the processor's output for the conversation
    prompt_length: int
    config: GenerationConfig  # the checkpoint's, with the caller's overrides and the token limit
    budget: ThinkingBudget
    reply: ReplyStream
    reuse: PromptReuse | None = None  # the prompt cache's part, when the variant has one

    @property
    def budget_processor(self) -> ForceBudgetTokens:
        return ForceBudgetTokens(self.budget, self.prompt_length)


def plan_generation(variant, messages: list[dict], max_new_tokens: int, sampling: Sampling | None,
                    thinking_budget: int | None, continue_final_message: bool = False) -> GenerationPlan:
    """The shared prologue of ``generate``: ``variant`` brings its processor, config, generation
    config and special tokens (and its prompt cache, if any). The reply is limited to what the
    context has room for."""
    started = time.perf_counter()
    limit = context_length(variant.config)
    batch = build_batch(variant.processor, [messages], max_positions=limit,
                        continue_final_message=continue_final_message)
    prompt_length = batch["input_ids"].shape[1]
    max_new_tokens = max(1, min(max_new_tokens, limit - prompt_length))
    config = generation_settings(variant.generation_config, sampling, max_new_tokens, variant.tokens.pad)
    if sampling is not None and sampling.seed is not None:
        torch.manual_seed(sampling.seed)  # generate() samples from torch's global generator
    budget = ThinkingBudget.for_tokens(None if continue_final_message else thinking_budget, variant.tokens)
    reuse = None
    if getattr(variant, "prompt_cache", None) is not None:
        reuse = PromptReuse.plan(variant.prompt_cache, variant.cache_owner, batch, merge_size(variant.config),
                                 variant.prefill_tile)
    reply = ReplyStream(variant.processor.tokenizer, budget, started, prompt_length, reuse.reused if reuse else 0)
    return GenerationPlan(batch, prompt_length, config, budget, reply, reuse)
