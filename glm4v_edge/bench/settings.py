"""What ``glm4v-edge bench`` measures, with its defaults in one place (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROMPT_SET_NAMES = ("standard", "quick", "gpu", "cpu", "none")  # see bench.latency.PROMPT_SETS; none: accuracy only


@dataclass(frozen=True)
class BenchSettings:
    artifacts: Path
    model: str | None = None  # the source checkpoint (None: the embedded tiny model)
    variants: str = "all"  # what the artifacts hold, or a comma-separated list
    baseline: str | None = None  # None: torch-fp32 on CPU, torch-bf16 on CUDA
    prompts: str = "standard"
    runs: int = 5  # timed runs per stage after one warm-up
    task_questions: int | None = None  # None: 100 for the embedded model, 0 otherwise
    fidelity_prompts: int = 0  # held-out shapes prompts added to the four parity prompts
    public_set: Path | None = None
    public_limit: int | None = None
    device: str | None = None
    threads: int | None = None
    out: Path | None = None  # None: <artifacts>/bench (committed evidence is written on purpose)
    name: str | None = None  # None: the artifacts folder's name
    peer: Path | None = None  # a GGUF of the same decoder, run by llama-bench in the same run

    @property
    def results_folder(self) -> Path:
        return self.out if self.out is not None else self.artifacts / "bench"
