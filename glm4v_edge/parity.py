"""Parity of a variant against the source model on fixed prompts, measured at export time.

Per prompt: greedy-match length (the common prefix of the two greedy replies, up to
``new_tokens``), and, teacher-forced on the reference's reply, top-1 agreement and the mean
KL(reference || variant) of next-token distributions.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from glm4v_edge import shapes
from glm4v_edge.messages import user_message
from glm4v_edge.runtime.inputs import build_batch, extend_batch
from glm4v_edge.runtime.variant import MeasurableVariant, Sampling, collect

NEW_TOKENS = 32


def parity_prompts() -> dict[str, list[dict]]:
    """Text only, one image, two images of different aspect ratios, a video.

    Drawn from the shapes task's held-out split (any GLM-4.1V can look at them); the indices
    are fixed, so every export measures the same prompts.
    """
    by_type = {"color": 1, "two_images": 3, "motion": 4}
    samples = {kind: shapes.make_sample("parity", index) for kind, index in by_type.items()}
    two = samples["two_images"]
    ratios = [image.width / image.height for image in two.images]
    assert abs(ratios[0] - ratios[1]) > 0.05, "the parity pair must differ in aspect ratio"
    return {
        "text": [user_message("Name three colours and three shapes.")],
        "image": samples["color"].messages(),
        "two_images": two.messages(),
        "video": samples["motion"].messages(),
    }


@dataclass(frozen=True)
class PromptParity:
    reference_tokens: int  # greedy reply length of the reference (<= NEW_TOKENS)
    greedy_match: int  # leading tokens the variant's greedy reply shares with it
    exact: bool  # the two greedy replies are identical (same tokens, same stop)
    top1_agreement: float  # teacher-forced on the reference reply
    mean_kl: float


def greedy_ids(variant: MeasurableVariant, messages: list[dict], new_tokens: int) -> list[int]:
    return collect(variant.generate(messages, max_new_tokens=new_tokens, sampling=Sampling.greedy())).token_ids


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and mean KL(reference || candidate) over positions (rows)."""
    ref, cand = log_softmax(reference.astype(np.float64)), log_softmax(candidate.astype(np.float64))
    agreement = float((ref.argmax(-1) == cand.argmax(-1)).mean())
    kl = float((np.exp(ref) * (ref - cand)).sum(-1).mean())
    return agreement, max(kl, 0.0)


@dataclass(frozen=True)
class ReferenceRun:
    """The source model's greedy reply to one prompt and its teacher-forced logits over it,
    computed once per export and compared with every precision."""

    messages: list[dict]
    token_ids: list[int]
    forced: dict  # prompt + reply, as the processor's batch
    rows: slice  # the positions that predict the reply's tokens
    logits: np.ndarray  # (len(token_ids), vocab)


def forced_batch(processor, messages: list[dict], token_ids: list[int]) -> tuple[dict, slice]:
    """The prompt with the reply appended, and the rows whose logits predict the reply."""
    prompt = build_batch(processor, [messages])
    forced = extend_batch(prompt, token_ids) if token_ids else prompt
    start = prompt["input_ids"].shape[1] - 1  # the position that predicts the first reply token
    return forced, slice(start, start + max(1, len(token_ids)))


def reference_run(reference: MeasurableVariant, messages: list[dict], new_tokens: int = NEW_TOKENS) -> ReferenceRun:
    token_ids = greedy_ids(reference, messages, new_tokens)
    forced, rows = forced_batch(reference.processor, messages, token_ids)
    return ReferenceRun(messages, token_ids, forced, rows, reference.forward_logits(forced)[0, rows])


def rebuilt_run(processor, messages: list[dict], token_ids: list[int], logits: np.ndarray) -> ReferenceRun:
    """A reference computed in another process (ids and logits travel; batches are rebuilt)."""
    forced, rows = forced_batch(processor, messages, token_ids)
    return ReferenceRun(messages, token_ids, forced, rows, logits)


def prompt_parity(run: ReferenceRun, candidate: MeasurableVariant, new_tokens: int = NEW_TOKENS) -> PromptParity:
    candidate_ids = greedy_ids(candidate, run.messages, new_tokens)
    match = next((i for i, (a, b) in enumerate(zip(run.token_ids, candidate_ids)) if a != b),
                 min(len(run.token_ids), len(candidate_ids)))
    agreement, kl = compare_logits(run.logits, candidate.forward_logits(run.forced)[0, run.rows])
    return PromptParity(len(run.token_ids), match, candidate_ids == run.token_ids, agreement, kl)


def measure_parity(runs: dict[str, ReferenceRun], candidate: MeasurableVariant) -> dict[str, dict]:
    """Parity per prompt name, as plain dicts for the manifest."""
    return {name: asdict(prompt_parity(run, candidate)) for name, run in runs.items()}


@dataclass(frozen=True)
class ParityReport:
    reference: str  # the reference variant's name, e.g. torch-fp32
    results: dict[str, dict[str, dict]]  # candidate label -> prompt -> PromptParity as a dict


def measure_against_reference(load_reference: Callable[[], MeasurableVariant],
                              candidates: dict[str, Callable[[], MeasurableVariant]],
                              on_candidate: Callable[[str], None] = lambda label: None) -> ParityReport:
    """Parity of each candidate against one reference, never two models in memory: the reference's
    replies and logits are computed first, the reference is freed, then each candidate is loaded,
    measured and freed in turn. ``on_candidate`` hears each label as its measurement starts."""
    reference = load_reference()
    runs = {name: reference_run(reference, messages) for name, messages in parity_prompts().items()}
    name = reference.name
    del reference
    gc.collect()
    results = {}
    for label, load in candidates.items():
        on_candidate(label)
        candidate = load()
        results[label] = measure_parity(runs, candidate)
        del candidate
        gc.collect()
    return ParityReport(name, results)
