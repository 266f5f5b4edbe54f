"""What ``glm4v-edge bench`` measures, with its defaults in one place (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glm4v_edge.hub import hub_reference
from glm4v_edge.runtime.prompt_cache import DEFAULT_PROMPT_CACHE_GB

PROMPT_SET_NAMES = ("standard", "quick", "gpu", "cpu", "none")  # see bench.latency.PROMPT_SETS; none: accuracy only


@dataclass(frozen=True)
class VariantChoice:
    """One row of a bench run: a variant, from the run's artifacts or from its own folder
    (``onnx-q4@FOLDER``: several exports of one precision compared in one run)."""

    name: str
    artifacts: Path | None = None  # None: the run's --artifacts

    @property
    def label(self) -> str:
        return self.name if self.artifacts is None else f"{self.name}@{self.artifacts.name}"


def parse_variant_choices(text: str) -> list[VariantChoice]:
    """'onnx-q4,onnx-q4@exports/block32' -> the choices, in order."""
    choices = []
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            name, _, folder = entry.partition("@")
            choices.append(VariantChoice(name.strip(), Path(folder.strip()) if folder.strip() else None))
    return choices


@dataclass(frozen=True)
class BenchSettings:
    artifacts: Path
    model: str | None = None  # the source checkpoint (None: the embedded tiny model)
    variants: str = "all"  # what the artifacts hold, or a comma-separated list (NAME or NAME@FOLDER)
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
    peers: tuple[Path, ...] = ()  # GGUFs of the same decoder (e.g. Q4_0, Q4_K_M, Q8_0), run by llama-bench in this run

    @property
    def results_folder(self) -> Path:
        """``out``, else beside the build: ``<artifacts>/bench``, or ``artifacts/<repo>/bench`` for a hub repo."""
        if self.out is not None:
            return self.out
        source = hub_reference(self.artifacts)
        return Path("artifacts") / source.repo.split("/")[1] / "bench" if source else self.artifacts / "bench"


@dataclass(frozen=True)
class ConversationSettings:
    artifacts: Path | None = None
    model: str | None = None
    variant: str = "onnx-q4"
    threads: int | None = None
    image_px: int = 784  # the CPU profile's largest square image
    max_tokens: int = 32  # per reply
    prompt_cache_gb: float = DEFAULT_PROMPT_CACHE_GB  # the run with the cache; the other has 0
    # 0: the history holds the model's own answers, as the demo sends them. N: each answer in the
    # history is a fixed text of N words instead (a client replaying a conversation; random-weight
    # models' replies decode to almost no text, so their own history is nearly empty).
    answer_words: int = 0
    out: Path = Path("artifacts/bench")
    name: str = "conversation"

    def server_args(self, prompt_cache_gb: float) -> list[str]:
        args = ["--variant", self.variant, "--prompt-cache-gb", f"{prompt_cache_gb:g}"]
        args += ["--artifacts", str(self.artifacts)] if self.artifacts else []
        args += ["--model", self.model] if self.model else []
        return args + (["--threads", str(self.threads)] if self.threads else [])
