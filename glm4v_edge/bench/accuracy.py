"""Accuracy of a variant: fidelity to the baseline on fixed prompts, and task exact-match.

Fidelity uses the export's four parity prompts (text, one image, two images of different
aspect ratios, a video). The baseline's greedy replies and teacher-forced logits are computed in
its own process and travel to the others as plain ids and arrays.
"""

from __future__ import annotations

import numpy as np

from glm4v_edge.parity import parity_prompts, prompt_parity, rebuilt_run, reference_run
from glm4v_edge.runtime.variant import Variant


def fidelity_prompts() -> dict[str, list[dict]]:
    return parity_prompts()


def reference_outputs(baseline: Variant, prompts: dict[str, list[dict]]) -> dict[str, dict]:
    outputs = {}
    for name, messages in prompts.items():
        run = reference_run(baseline, messages)
        outputs[name] = {"token_ids": run.token_ids, "logits": np.asarray(run.logits, dtype=np.float32)}
    return outputs


def fidelity(variant: Variant, prompts: dict[str, list[dict]], references: dict[str, dict]) -> dict:
    per_prompt = {}
    for name, messages in prompts.items():
        reference = references[name]
        run = rebuilt_run(variant.processor, messages, reference["token_ids"], reference["logits"])
        result = prompt_parity(run, variant)
        per_prompt[name] = {"greedy_match": result.greedy_match, "reference_tokens": result.reference_tokens,
                            "top1_agreement": result.top1_agreement, "mean_kl": result.mean_kl}
    return {
        "mean_kl": float(np.mean([p["mean_kl"] for p in per_prompt.values()])),
        "top1_agreement": float(np.mean([p["top1_agreement"] for p in per_prompt.values()])),
        "greedy_match": int(sum(p["greedy_match"] for p in per_prompt.values())),
        "reference_tokens": int(sum(p["reference_tokens"] for p in per_prompt.values())),
        "per_prompt": per_prompt,
    }


def task_accuracy(variant: Variant, questions: int, max_new_tokens: int) -> dict:
    """Exact match on the embedded model's held-out questions, per question type."""
    from glm4v_edge.tiny.eval import evaluate

    return evaluate(variant, questions, max_new_tokens=max_new_tokens).to_dict()

