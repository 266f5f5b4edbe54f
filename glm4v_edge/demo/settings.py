"""What a demo instance serves and its limits; from the command line or, on a Space, the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from glm4v_edge.names import REMOTE_URL_ENV

# Environment variables a Hugging Face Space (or any deployment) sets instead of CLI flags:
# setting -> (variable, how its text becomes the value).
ENV = {
    "model": ("GLM4V_EDGE_MODEL", str),  # hub id or folder for torch / GPTQ variants (default: the embedded model)
    "artifacts": ("GLM4V_EDGE_ARTIFACTS", Path),  # a `glm4v-edge build` folder: its ONNX and GPTQ variants appear
    "variant": ("GLM4V_EDGE_VARIANT", str),  # the variant selected at start
    "remote_url": (REMOTE_URL_ENV, str),  # an OpenAI-compatible endpoint: adds the `remote` variant
    "remote_model": ("GLM4V_EDGE_REMOTE_MODEL", str),  # the served model id at that endpoint
    "device": ("GLM4V_EDGE_DEVICE", str),
    "memory_budget_gb": ("GLM4V_EDGE_MEMORY_GB", float),
    "prompt_cache_gb": ("GLM4V_EDGE_PROMPT_CACHE_GB", float),  # 0 turns the prompt cache off
}


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class DemoSettings:
    model: str | None = None
    artifacts: Path | None = None
    variant: str | None = None
    remote_url: str | None = None
    remote_model: str | None = None
    device: str | None = None
    threads: int | None = None
    memory_budget_gb: float | None = None  # loaded variants + the prompt cache kept within this (default: half the RAM)
    # Earlier turns' key/value cache and image features, reused by the next turn (None: the
    # default size, prompt_cache.DEFAULT_PROMPT_CACHE_GB; 0: off).
    prompt_cache_gb: float | None = None
    concurrency_per_variant: int = 1  # generations at once on one variant; more wait in the queue
    queue_size: int = 32  # waiting requests beyond this are turned away
    max_images: int = 10  # per message, PDF pages included (GLM-4.1V's own limit)
    max_file_mb: int = 50
    max_new_tokens: int = 1024  # the slider's start value
    # The thinking-budget slider's start and top. The budget is this project's addition: the
    # official demo has none (8192 there is max_new_tokens, the whole reply's limit).
    thinking_budget: int = 8192

    @classmethod
    def from_env(cls, **overrides) -> DemoSettings:
        """Environment first, then explicit (non-None) overrides."""
        values = {name: convert(os.environ[variable]) for name, (variable, convert) in ENV.items()
                  if os.environ.get(variable)}
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    @property
    def memory_budget_bytes(self) -> int:
        if self.memory_budget_gb is not None:
            return int(self.memory_budget_gb * 2**30)
        return total_memory_bytes() // 2
