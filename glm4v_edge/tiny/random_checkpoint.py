"""Same-architecture checkpoints with random weights at larger sizes, for speed measurements."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from glm4v_edge.checkpoint import embedded_model_dir
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.files import atomic_directory
from glm4v_edge.tiny import build

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def write_random_checkpoint(
    preset: str, out: Path | None = None, dtype: str = "bf16", config_only: bool = False, overwrite: bool = False
) -> Path:
    """A loadable checkpoint of preset ``preset`` (the tiny model's tokenizer, real pixel budgets) at
    ``out`` (default: artifacts/random-PRESET)."""
    out = out or Path(f"artifacts/random-{preset}")
    if preset not in build.PRESETS:
        raise Glm4vEdgeError(f"unknown preset {preset!r}; choose one of: {', '.join(build.PRESETS)}")
    if dtype not in DTYPES:
        raise Glm4vEdgeError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.model_max_length = build.PRESETS[preset].max_position_embeddings
    processor = build.build_processor(tokenizer, budget="tiny" if preset == "tiny" else "default")
    config = build.build_config(build.PRESETS[preset], tokenizer)
    config.dtype = DTYPES[dtype]
    with atomic_directory(out, overwrite=overwrite) as staging:
        config.save_pretrained(staging)
        build.build_generation_config(tokenizer).save_pretrained(staging)
        processor.save_pretrained(staging)
        if not config_only:
            build.write_random_weights(config, staging, DTYPES[dtype])
    return out
