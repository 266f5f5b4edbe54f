"""The baseline variant: the checkpoint in transformers, generating with ``model.generate``.

With a prompt cache (``prompt_cache.py``), ``generate`` starts from a ``DynamicCache`` holding a
copy of the longest matching prefix's positions (transformers continues from a cache given
the whole prompt), fed the prompt's embeddings with each image's features from the cache or
the vision tower, and the whole prompt's M-RoPE positions.
"""

from __future__ import annotations

import functools
import inspect
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from glm4v_edge import checkpoint
from glm4v_edge.dims import context_length, merge_size
from glm4v_edge.runtime.generation import StopWhenSet, plan_generation
from glm4v_edge.runtime.positions import rope_positions
from glm4v_edge.runtime.prompt_cache import MediaItem, PromptCache, PromptReuse
from glm4v_edge.runtime.variant import Sampling, TokenEvent
from glm4v_edge.weights import load_bounded

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def cache_keyword(model: torch.nn.Module) -> str:
    """What ``generate`` calls a given cache: ``cache`` from transformers 5.2x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


class QueueStreamer(BaseStreamer):
    """Hands new token ids from the generating thread to the consuming one."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        for token_id in value.flatten().tolist():
            self.queue.put(token_id)

    def end(self) -> None:
        self.queue.put(None)


def tensor_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers (GPTQ's packed weights are buffers)."""
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


class TorchVariant:
    """A GLM-4.1V checkpoint run by transformers on CPU or CUDA."""

    def __init__(
        self, model: str | Path | None = None, *, dtype: torch.dtype | None = None,
        device: str | None = None, name: str | None = None, bounded_memory: bool = False,
        cache: str | None = None, compiled: bool = False,
    ):
        """``bounded_memory``: load on CPU at the memory of the parameters alone (``weights.load_bounded``),
        for references that must fit a machine exactly; otherwise transformers' ``from_pretrained``.
        ``cache``: transformers' cache implementation for ``generate`` (e.g. "static"); ``compiled``:
        let ``generate`` compile the decode step (transformers does it with a static cache)."""
        self.device = device or checkpoint.default_device()
        self.dtype = dtype or checkpoint.default_dtype(self.device)
        self.source = checkpoint.resolve_model(model)
        self.processor = checkpoint.load_processor(self.source)
        if bounded_memory:
            self.model = load_bounded(checkpoint.local_checkpoint(self.source), checkpoint.load_config(self.source),
                                      self.dtype).to(self.device)
        else:
            self.model = checkpoint.load_model(self.source, dtype=self.dtype, device=self.device)
        self.config = self.model.config
        self.context_length = context_length(self.config)
        self.generation_config = checkpoint.load_generation_config(self.source)
        self.tokens = checkpoint.SpecialTokens.from_checkpoint(
            self.model.config, self.processor.tokenizer, self.generation_config
        )
        self.cache, self.compiled = cache, compiled
        self.prompt_cache: PromptCache | None = None  # set by the loader: reuse earlier prompts' cache
        # torch's CPU matmul rounds a row by how the run's rows are split among kernels and threads:
        # runs split at multiples of 16 mostly leave the whole run's cache bit for bit, not always
        # (measured; the replies are the same in every test, prompt_cache.py)
        self.prefill_tile = 16
        suffix = "-compiled" if compiled else f"-{cache}" if cache else ""
        self.name = name or f"torch-{DTYPE_NAMES.get(self.dtype, str(self.dtype))}{suffix}"
        first_linear = self.model.model.language_model.layers[0].mlp.gate_up_proj
        self.details = {"dtype": str(self.dtype).removeprefix("torch."), "device": self.device,
                        "cache": cache or "dynamic",
                        "compiled": compiled and self.device.startswith("cuda"),  # transformers compiles on CUDA only
                        "linear_kernel": type(first_linear).__name__}  # a GPTQ checkpoint's kernel, as loaded
        self.decoder_bytes = tensor_bytes(self.model.model.language_model.layers, self.model.model.language_model.norm,
                                          self.model.lm_head)
        folder = Path(self.source)
        weights = list(folder.glob("*.safetensors")) if folder.is_dir() else []
        self.artifact_bytes = sum(f.stat().st_size for f in weights) if weights else tensor_bytes(self.model)

    @property
    def supports_prompt_cache(self) -> bool:
        return self.cache is None  # a static cache is sized and compiled for one generation

    @property
    def cache_owner(self) -> str:
        return f"{self.name}@{id(self):x}"

    def generate(
        self,
        messages: list[dict],
        *,
        max_new_tokens: int = 512,
        sampling: Sampling | None = None,
        thinking_budget: int | None = None,
        stop: threading.Event | None = None,
        continue_final_message: bool = False,
    ) -> Iterator[TokenEvent]:
        plan = plan_generation(self, messages, max_new_tokens, sampling, thinking_budget, continue_final_message)
        if self.cache:
            plan.config.cache_implementation = self.cache
            plan.config.disable_compile = not self.compiled
        inputs = self._on_device(plan.batch) if plan.reuse is None else self._reusing_inputs(plan.batch, plan.reuse)
        streamer = QueueStreamer()
        halt = threading.Event()  # set when the consumer stops reading

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        generation_config=plan.config,
                        logits_processor=LogitsProcessorList([plan.budget_processor]),
                        stopping_criteria=StoppingCriteriaList([StopWhenSet(stop, halt)]),
                        streamer=streamer,
                    )
                if plan.reuse is not None:  # generate returned between two tokens: every position is whole
                    layers = inputs[cache_keyword(self.model)].layers
                    plan.reuse.remember(lambda positions: [tensor[:, :, :positions].clone() for layer in layers
                                                           for tensor in (layer.keys, layer.values)])
            except BaseException as error:  # re-raised in the consuming thread
                streamer.queue.put(error)
                streamer.queue.put(None)

        worker = threading.Thread(target=run, name=f"{self.name}-generate", daemon=True)
        worker.start()
        try:
            while (item := streamer.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if item in self.tokens.eos:
                    continue  # the end-of-turn marker is not part of the reply
                yield plan.reply.event(item)
        finally:
            halt.set()
            worker.join()

    def _on_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v).to(self.device) for k, v in batch.items()}

    def _reusing_inputs(self, batch: dict[str, Any], reuse: PromptReuse) -> dict[str, Any]:
        """``generate`` inputs that start from the cached prefix: a copy of its positions as the
        cache, the embeddings of the rest (generate reads only those), the whole prompt's
        positions (text row first, as transformers passes them) and no pixels."""
        start, ids = reuse.reused, torch.as_tensor(batch["input_ids"])
        types = batch.get("mm_token_type_ids")
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(ids.to(self.device))
            media = torch.as_tensor(types if types is not None else torch.zeros_like(ids)).to(self.device) != 0
            media[:, :start] = False
            if media.any():
                pieces = reuse.media_rows(types, functools.partial(self._encode_item, batch))
                embeds[media] = torch.cat(pieces).to(embeds.dtype)
            prefix = reuse.entry.kv if start else []
            cache = DynamicCache([(k[:, :, :start].clone(), v[:, :, :start].clone())
                                  for k, v in zip(prefix[0::2], prefix[1::2])] or None)
        numpy = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        positions, _ = rope_positions(numpy["input_ids"], numpy["attention_mask"], numpy.get("mm_token_type_ids"),
                                      numpy.get("image_grid_thw"), numpy.get("video_grid_thw"), merge_size(self.config))
        text = np.arange(ids.shape[1])[None, None]
        inputs = {"input_ids": ids, "attention_mask": torch.as_tensor(batch["attention_mask"]), "inputs_embeds": embeds,
                  "position_ids": torch.from_numpy(np.concatenate([text, positions]))}
        return {**{key: value.to(self.device) for key, value in inputs.items()}, cache_keyword(self.model): cache}

    def _encode_item(self, batch: dict[str, Any], item: MediaItem) -> torch.Tensor:
        """One image's (or video's) merged features from the vision tower."""
        pixels = torch.as_tensor(batch[item.source][item.patches]).to(self.device, self.dtype)
        grid = torch.as_tensor(item.grid[None]).to(self.device)
        encode = self.model.model.get_image_features if item.kind == "image" else self.model.model.get_video_features
        with torch.inference_mode():
            features = encode(pixels, grid)
        features = getattr(features, "pooler_output", features)  # transformers' output, or the split features
        return torch.cat(list(features)) if isinstance(features, (list, tuple)) else features

    def forward_logits(self, batch: dict[str, Any]) -> np.ndarray:
        inputs = self._on_device(batch)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        return logits.float().cpu().numpy()

    def encode_vision(self, batch: dict[str, Any]) -> None:
        inputs = self._on_device(batch)
        with torch.inference_mode():
            if "pixel_values" in inputs:
                self.model.model.get_image_features(inputs["pixel_values"].to(self.dtype), inputs["image_grid_thw"])
            if "pixel_values_videos" in inputs:
                self.model.model.get_video_features(inputs["pixel_values_videos"].to(self.dtype),
                                                    inputs["video_grid_thw"])

    def prompt_logits(self, batch: dict[str, Any]) -> np.ndarray:
        inputs = self._on_device(batch)
        with torch.inference_mode():
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
        return logits.float().cpu().numpy()
