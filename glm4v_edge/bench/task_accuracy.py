"""Task accuracy on the shapes task: greedy replies to held-out questions, exact match on the
parsed answer.

Works on any ``Variant``, so the same score is computed for torch, ONNX and GPTQ builds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glm4v_edge import shapes
from glm4v_edge.files import atomic_write_text
from glm4v_edge.machine import describe_machine
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.runtime.variant import Sampling, Variant, collect


@dataclass
class Outcome:
    index: int
    qtype: str
    expected: str
    predicted: str
    text: str

    @property
    def correct(self) -> bool:
        return self.predicted == self.expected


@dataclass
class EvalReport:
    variant: str
    outcomes: list[Outcome] = field(default_factory=list)

    def accuracy(self, qtype: str | None = None) -> float:
        chosen = [o for o in self.outcomes if qtype is None or o.qtype == qtype]
        return sum(o.correct for o in chosen) / len(chosen) if chosen else float("nan")

    def per_type(self) -> dict[str, tuple[int, int]]:
        """qtype -> (correct, total), in the task's order."""
        counts = {}
        for qtype in shapes.QUESTION_TYPES:
            chosen = [o for o in self.outcomes if o.qtype == qtype]
            if chosen:
                counts[qtype] = (sum(o.correct for o in chosen), len(chosen))
        return counts

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "samples": len(self.outcomes),
            "accuracy": self.accuracy(),
            "per_type": {q: {"correct": c, "total": t, "accuracy": c / t} for q, (c, t) in self.per_type().items()},
        }


def evaluate(
    variant: Variant,
    count: int = 500,
    *,
    split: str = shapes.HELDOUT_SPLIT,
    thinking_budget: int | None = None,
    max_new_tokens: int = 64,
    on_sample: Callable[[Outcome], None] | None = None,
) -> EvalReport:
    """Greedy-decode ``count`` held-out questions (types in rotation) and score them."""
    report = EvalReport(variant.name)
    for index in range(count):
        sample = shapes.make_sample(split, index)
        result = collect(variant.generate(
            sample.messages(), max_new_tokens=max_new_tokens, sampling=Sampling.greedy(),
            thinking_budget=thinking_budget,
        ))
        outcome = Outcome(index, sample.qtype, sample.answer, result.reply.final_answer, result.text)
        report.outcomes.append(outcome)
        if on_sample is not None:
            on_sample(outcome)
    return report


def evaluate_and_record(variant: Variant, count: int, *, thinking_budget: int | None = None,
                        json_out: Path | None = None, model: str | None = None,
                        progress: Progress = SILENT) -> EvalReport:
    """``glm4v-edge tiny eval``: ``evaluate`` with progress, and the report as JSON when asked."""
    progress.start(f"eval {variant.name}", count)
    started = time.perf_counter()
    correct = 0

    def on_sample(outcome: Outcome) -> None:
        nonlocal correct
        correct += outcome.correct
        progress.step(f"{correct}/{outcome.index + 1} right")

    report = evaluate(variant, count, thinking_budget=thinking_budget, on_sample=on_sample)
    if json_out is not None:
        record = {
            "command": " ".join(["glm4v-edge", *sys.argv[1:]]),
            "model": model or "embedded tiny model",
            "thinking_budget": thinking_budget,
            "seconds": round(time.perf_counter() - started, 1),
            **report.to_dict(),
            "machine": describe_machine(),
        }
        atomic_write_text(json_out, json.dumps(record, indent=2) + "\n")
    return report
