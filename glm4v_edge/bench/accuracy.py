"""Accuracy of a variant: fidelity to the baseline on fixed prompts, and task exact-match.

Fidelity uses the export's four parity prompts (text, one image, two images of different
aspect ratios, a video), plus as many held-out shapes prompts as asked. The baseline's greedy
replies, teacher-forced logits and task replies are computed in its own process and travel to
the others as plain ids, arrays and strings.
"""

from __future__ import annotations

import numpy as np

from glm4v_edge import shapes
from glm4v_edge.bench.task_accuracy import evaluate
from glm4v_edge.parity import parity_prompts, prompt_parity, rebuilt_run, reference_run
from glm4v_edge.runtime.variant import MeasurableVariant

FIRST_FIDELITY_INDEX = 10_000  # held-out indices far from the task-accuracy questions


def fidelity_prompts(extra: int = 0) -> dict[str, list[dict]]:
    prompts = parity_prompts()
    for i in range(extra):
        prompts[f"heldout-{FIRST_FIDELITY_INDEX + i}"] = shapes.make_sample(
            shapes.HELDOUT_SPLIT, FIRST_FIDELITY_INDEX + i).messages()
    return prompts


def reference_outputs(baseline: MeasurableVariant, prompts: dict[str, list[dict]]) -> dict[str, dict]:
    outputs = {}
    for name, messages in prompts.items():
        run = reference_run(baseline, messages)
        outputs[name] = {"token_ids": run.token_ids, "logits": np.asarray(run.logits, dtype=np.float32)}
    return outputs


def fidelity(variant: MeasurableVariant, prompts: dict[str, list[dict]], references: dict[str, dict]) -> dict:
    per_prompt = {}
    for name, messages in prompts.items():
        reference = references[name]
        run = rebuilt_run(variant.processor, messages, reference["token_ids"], reference["logits"])
        result = prompt_parity(run, variant)
        per_prompt[name] = {"greedy_match": result.greedy_match, "reference_tokens": result.reference_tokens,
                            "exact": result.exact, "top1_agreement": result.top1_agreement,
                            "mean_kl": result.mean_kl}
    return {
        "prompts": len(per_prompt),
        "mean_kl": float(np.mean([p["mean_kl"] for p in per_prompt.values()])),
        "top1_agreement": float(np.mean([p["top1_agreement"] for p in per_prompt.values()])),
        "greedy_match": int(sum(p["greedy_match"] for p in per_prompt.values())),
        "reference_tokens": int(sum(p["reference_tokens"] for p in per_prompt.values())),
        "identical_replies": int(sum(p["exact"] for p in per_prompt.values())),
        "per_prompt": per_prompt,
    }


def task_accuracy(variant: MeasurableVariant, questions: int, max_new_tokens: int,
                  baseline_replies: list[str] | None) -> tuple[dict, list[str]]:
    """Exact match on the shapes task's held-out questions, per question type, and the replies
    (compared with the baseline's when given: how many are token-for-token the same text)."""
    report = evaluate(variant, questions, max_new_tokens=max_new_tokens)
    replies = [outcome.text for outcome in report.outcomes]
    result = report.to_dict()
    if baseline_replies is not None:
        result["replies_identical_to_baseline"] = sum(a == b for a, b in zip(replies, baseline_replies))
    return result, replies
