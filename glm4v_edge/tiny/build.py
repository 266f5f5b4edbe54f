"""Build GLM-4.1V-shaped checkpoints locally: tokenizer, config, processor, weights.

The tokenizer is a small byte-level BPE that carries the real model's special tokens and
its official chat template, so prompts are built exactly as for the 9B model. Sizes come in
presets: ``tiny`` (the trained, committed model), ``medium`` (CPU latency work) and ``9b``
(the real GLM-4.1V-9B-Thinking shape). Ids differ from the real model's; code reads them
from the config and tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessor,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    PreTrainedTokenizerFast,
)

from glm4v_edge.checkpoint import quiet_transformers
from glm4v_edge.files import atomic_directory

# The real GLM-4.1V special tokens, in the real vocabulary's order.
SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    "<|image|>", "<|video|>",
    "<think>", "</think>", "<answer>", "</answer>", "<|begin_of_box|>", "<|end_of_box|>",
)
# Generation ends on any of these, as in the real generation_config (endoftext, user, observation).
EOS_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
PAD_TOKEN = "<|endoftext|>"
BPE_VOCAB_SIZE = 640


@dataclass(frozen=True)
class ModelShape:
    """The sizes that differ between presets; everything else is the real architecture."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    image_size: int
    max_position_embeddings: int
    vocab_size: int | None = None  # None: the tokenizer's size

    @property
    def mrope_section(self) -> list[int]:
        # The 9B's [8, 12, 12] over 64 rotary dims, scaled to this head size
        # (partial rotary 0.5: rotary dims = head_dim / 2, sections sum to a quarter).
        head_dim = self.text_hidden // self.text_heads
        quarter = head_dim // 4
        t = quarter // 4
        h = (quarter - t) // 2
        return [t, h, quarter - t - h]


PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(
        text_hidden=128, text_layers=4, text_heads=4, text_kv_heads=2, text_intermediate=384,
        vision_hidden=128, vision_depth=3, vision_heads=4, vision_intermediate=384,
        image_size=112, max_position_embeddings=4096,
    ),
    # The 9B's decoder at a CPU-friendly size (DESIGN.md): 1.24 B text parameters.
    "medium": ModelShape(
        text_hidden=2048, text_layers=12, text_heads=16, text_kv_heads=2, text_intermediate=6848,
        vision_hidden=1024, vision_depth=8, vision_heads=8, vision_intermediate=6848,
        image_size=336, max_position_embeddings=65536, vocab_size=151552,
    ),
    # The 9B's real widths (and its whole vision tower) with 2 decoder layers: fp32 parity of
    # every width the 9B has, on a 24 GiB machine (2.5 B parameters).
    "9b-shallow": ModelShape(
        text_hidden=4096, text_layers=2, text_heads=32, text_kv_heads=2, text_intermediate=13696,
        vision_hidden=1536, vision_depth=24, vision_heads=12, vision_intermediate=13696,
        image_size=336, max_position_embeddings=65536, vocab_size=151552,
    ),
    # zai-org/GLM-4.1V-9B-Thinking.
    "9b": ModelShape(
        text_hidden=4096, text_layers=40, text_heads=32, text_kv_heads=2, text_intermediate=13696,
        vision_hidden=1536, vision_depth=24, vision_heads=12, vision_intermediate=13696,
        image_size=336, max_position_embeddings=65536, vocab_size=151552,
    ),
}

# Pixel budgets (t * h * w, frames paired) for the processors. The tiny model gets smaller
# budgets so a large upload stays within its short context.
IMAGE_PIXELS = {"tiny": (112 * 112, 2 * 448 * 448), "default": (112 * 112, 2 * 28 * 28 * 6144)}
VIDEO_PIXELS = {"tiny": (112 * 112, 2 * 28 * 28 * 600), "default": (112 * 112, 47_040_000)}


def chat_template() -> str:
    """The official GLM-4.1V chat template, shipped verbatim."""
    return resources.files("glm4v_edge.tiny").joinpath("glm41v_chat_template.jinja").read_text()


def build_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the task's text, with the real special tokens after it."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    bpe.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        pad_token=PAD_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=PRESETS["tiny"].max_position_embeddings,
        chat_template=chat_template(),
    )


def build_config(shape: ModelShape, tokenizer: PreTrainedTokenizerFast) -> Glm4vConfig:
    ids = tokenizer.convert_tokens_to_ids
    vocab_size = shape.vocab_size or len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=1e-5,
        pad_token_id=ids(PAD_TOKEN),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": shape.mrope_section,
        },
    )
    vision_config = dict(
        depth=shape.vision_depth,
        hidden_size=shape.vision_hidden,
        num_heads=shape.vision_heads,
        intermediate_size=shape.vision_intermediate,
        out_hidden_size=shape.text_hidden,  # the merger writes straight into the decoder
        image_size=shape.image_size,
        patch_size=14,
        temporal_patch_size=2,
        spatial_merge_size=2,
        rms_norm_eps=1e-5,
    )
    return Glm4vConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"),
        tie_word_embeddings=False,
        architectures=["Glm4vForConditionalGeneration"],
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, budget: str = "default") -> Glm4vProcessor:
    image_min, image_max = IMAGE_PIXELS[budget]
    video_min, video_max = VIDEO_PIXELS[budget]
    image_processor = Glm4vImageProcessor(size={"shortest_edge": image_min, "longest_edge": image_max})
    video_processor = Glm4vVideoProcessor(
        size={"shortest_edge": video_min, "longest_edge": video_max},
        max_image_size={"longest_edge": video_max},
    )
    return Glm4vProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template(),
    )


def build_generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Greedy by default; generation stops on the real model's three end tokens."""
    ids = tokenizer.convert_tokens_to_ids
    return GenerationConfig(
        do_sample=False,
        eos_token_id=[ids(token) for token in EOS_TOKENS],
        pad_token_id=ids(PAD_TOKEN),
        max_new_tokens=512,
    )


def save_checkpoint(
    out: Path,
    processor: Glm4vProcessor,
    config: Glm4vConfig,
    generation_config: GenerationConfig,
    model: Glm4vForConditionalGeneration | None = None,
    overwrite: bool = False,
    extra_json: dict[str, dict] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (weights from ``model`` when given)."""
    with atomic_directory(out, overwrite=overwrite) as staging, quiet_transformers():
        if model is not None:
            model.save_pretrained(staging)
        else:
            config.save_pretrained(staging)
        generation_config.save_pretrained(staging)
        processor.save_pretrained(staging)
        for name, content in (extra_json or {}).items():
            (staging / name).write_text(json.dumps(content, indent=2) + "\n")
    return out


def write_random_weights(config: Glm4vConfig, out: Path, dtype: torch.dtype, shard_bytes: int = 2 << 30) -> None:
    """Random weights shard by shard, so even the 9B shape needs only one shard of memory."""
    with torch.device("meta"):
        skeleton = Glm4vForConditionalGeneration(config)
    std = config.text_config.initializer_range
    generator = torch.Generator().manual_seed(0)
    shards: list[list[str]] = []
    shard: dict[str, torch.Tensor] = {}
    shard_size = total = 0

    def flush() -> None:
        nonlocal shard, shard_size
        save_file(shard, str(out / f"shard-{len(shards):05d}.tmp"), metadata={"format": "pt"})
        shards.append(list(shard))
        shard, shard_size = {}, 0

    for key, meta in skeleton.state_dict().items():
        if key.endswith("norm.weight"):
            tensor = torch.ones(meta.shape, dtype=dtype)
        elif key.endswith(".bias"):
            tensor = torch.zeros(meta.shape, dtype=dtype)
        else:
            tensor = torch.empty(meta.shape).normal_(0.0, std, generator=generator).to(dtype)
        size = tensor.numel() * dtype.itemsize
        if shard and shard_size + size > shard_bytes:
            flush()
        shard[key] = tensor
        shard_size += size
        total += size
    flush()

    if len(shards) == 1:
        (out / "shard-00000.tmp").rename(out / "model.safetensors")
        return
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (out / f"shard-{i:05d}.tmp").rename(out / name)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
