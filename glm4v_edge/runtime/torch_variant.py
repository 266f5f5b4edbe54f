"""The baseline variant: the checkpoint in transformers, generating with ``model.generate``."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from glm4v_edge import checkpoint
from glm4v_edge.dims import context_length
from glm4v_edge.runtime.generation import StopWhenSet, plan_generation
from glm4v_edge.runtime.variant import Sampling, TokenEvent
from glm4v_edge.weights import load_bounded

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


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
        inputs = self._on_device(plan.batch)
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
