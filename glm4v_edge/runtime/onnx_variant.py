"""The ONNX variant: the exported graphs run by onnxruntime, the decode loop on the host.

Per step the decoder sees only the new token; its key/value cache stays in onnxruntime
``OrtValue``s bound through IO binding (on the GPU with onnxruntime-gpu's CUDA provider, so
the cache never crosses to the host). A generation allocates the cache once, as long as the
prompt plus the reply can be, and binds it as both the past input and the present output:
GroupQueryAttention then writes each new position in place instead of copying the whole cache
every step (at 8192 positions that copy was a third of a medium decode step). With a prompt
cache (``prompt_cache.py``), a request starts from the cached positions of its longest matching
prefix and prefills only the rest. The processor, the chat template, the thinking parser and the
token choice are the same as the torch variant's.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import LogitsProcessorList
from transformers.vision_utils import get_vision_position_ids

from glm4v_edge import checkpoint
from glm4v_edge.dims import context_length, kv_shape, merge_size
from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.manifest import read_manifest, verify_file
from glm4v_edge.names import (
    DECODER_INPUTS,
    EMBED_INPUT,
    IN_PLACE_KV_CACHES,
    PAST,
    PRESENT,
    ROOM_KV_CACHES,
    VISION_INPUTS,
    external_data_files,
    graph_file,
    kv_names,
    onnx_variant,
)
from glm4v_edge.runtime.generation import GenerationPlan, choose_tokens, host_logits_processors, plan_generation
from glm4v_edge.runtime.positions import rope_positions
from glm4v_edge.runtime.prompt_cache import MediaItem, PromptCache, PromptReuse, media_items
from glm4v_edge.runtime.variant import Sampling, TokenEvent

NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# Each decoder precision's prefill tile, for exact prompt-cache reuse (prompt_cache.py): float
# MatMul rounds a one-row run differently (matrix-vector), so 2; MatMulNBits computes rows in pairs
# and an odd last row alone (measured), 16 also covers wider tiles on other CPUs; int8 quantizes its
# activations with one scale per tensor, so no row is independent of its run (features are reused).
PREFILL_TILE = {"fp32": 2, "fp16": 2, "q4": 16, "q4f16": 16, "int8": None}


CUDA = "CUDAExecutionProvider"


def default_onnx_device() -> str:
    return "cuda" if CUDA in ort.get_available_providers() else "cpu"


def parse_device(device: str) -> tuple[str, int]:
    """"cpu", "cuda" or "cuda:N" -> (onnxruntime's device name, device index), checked."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise Glm4vEdgeError(f"onnx variants run on cpu, cuda or cuda:N, not {device!r}")
    if kind == "cuda" and CUDA not in ort.get_available_providers():
        raise Glm4vEdgeError("the installed onnxruntime has no CUDA execution provider: pip install "
                             "'glm4v-edge[gpu]' (onnxruntime-gpu in place of onnxruntime) on a machine with CUDA")
    return kind, int(index or 0)


def matrix_bits_per_weight(path: Path) -> float | None:
    """Stored bits per weight of a graph's constant matrices (MatMul / MatMulNBits: the decoder's
    linears and lm_head), scales and zero points included: what a decode step reads per weight."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}
    packed = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}

    def bits(name: str) -> int:
        tensor = tensors[name]
        item = 4 if tensor.data_type in packed else 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        return item * int(np.prod(tensor.dims, dtype=np.int64))

    stored = weights = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            sizes = {a.name: a.i for a in node.attribute if a.name in ("K", "N")}
            stored += sum(bits(name) for name in node.input[1:4] if name in tensors)
            weights += sizes["K"] * sizes["N"]
        elif node.op_type in ("MatMul", "MatMulInteger") and node.input[1] in tensors \
                and len(tensors[node.input[1]].dims) == 2:
            stored += bits(node.input[1])  # int8's per-channel scales live outside the node: not counted
            weights += int(np.prod(tensors[node.input[1]].dims, dtype=np.int64))
    return round(stored / weights, 3) if weights else None


class Graph:
    """One ONNX session plus IO binding on the chosen device: inputs, outputs and the KV cache
    stay there between steps (on the GPU, the cache never crosses to the host)."""

    def __init__(self, path: Path, device: str, threads: int | None):
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        if threads:
            options.intra_op_num_threads = threads
        self.device, self.device_id = parse_device(device)
        providers = [(CUDA, {"device_id": self.device_id}), "CPUExecutionProvider"] if self.device == "cuda" \
            else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise Glm4vEdgeError(f"onnxruntime cannot load {path}: {first_line(error)}") from None
        self.path = path
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def float_type(self, name: str) -> type:
        return NUMPY_TYPES[self.input_types[name]]

    def value(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def run(self, inputs: dict[str, np.ndarray | ort.OrtValue],
            outputs: dict[str, ort.OrtValue] | None = None) -> list[ort.OrtValue]:
        """Run with ``inputs``; ``outputs`` binds named outputs to existing values (written in
        place), the rest onnxruntime allocates."""
        outputs = outputs or {}
        binding = self.session.io_binding()
        # A CPU OrtValue made from numpy points at the array, and the binding holds only the native
        # value: the converted arrays must outlive the run (onnxruntime <= 1.29 read freed memory).
        values = []
        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                if self.input_types[name] in NUMPY_TYPES:
                    value = value.astype(self.float_type(name), copy=False)
                value = self.value(value)
            values.append(value)
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            if name in outputs:
                binding.bind_ortvalue_output(name, outputs[name])
            else:
                binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()


def encode_item(vision: Graph, merge: int, batch: dict[str, np.ndarray], item: MediaItem) -> np.ndarray:
    """The vision graph on one image, or on a video one frame pair per call (see export.graphs):
    its merged features."""
    pixels = batch[item.source][item.patches]
    t, h, w = (int(size) for size in item.grid)
    grid = np.array([[1, h, w]], dtype=np.int64)
    positions = get_vision_position_ids(torch.from_numpy(grid), merge).numpy()
    pieces = [vision.run(dict(zip(VISION_INPUTS, (pixels[frame * h * w:(frame + 1) * h * w], grid, positions))))[0]
              .numpy() for frame in range(t)]
    return np.concatenate(pieces)


def encode_media(vision: Graph, merge: int, batch: dict[str, np.ndarray]) -> np.ndarray | None:
    """The vision graph on every image, then every video, of a processor batch (numpy): their
    merged features in prompt order, or None when the batch has no media."""
    pieces = [encode_item(vision, merge, batch, item) for item in media_items(batch, merge)]
    return np.concatenate(pieces).astype(np.float32) if pieces else None


@dataclass
class DecodeState:
    """What one step of the host loop carries to the next."""

    past: list[ort.OrtValue]  # (batch, kv_heads, positions, head_dim); see ``shared_cache``
    attention_mask: np.ndarray  # (batch, past + new): as long as the positions written
    next_position: np.ndarray  # (batch,) the M-RoPE position of the next token
    input_ids: torch.Tensor  # prompt + generated, for repetition penalty and the thinking budget
    shared_cache: bool = False  # ``past`` is preallocated and updated in place (else replaced each step)
    host: list[np.ndarray] | None = None  # the CPU memory behind a shared ``past``: kept alive with it

    def kv(self, positions: int) -> list[np.ndarray]:
        """A compact copy of the first ``positions`` written, per past name (for the prompt cache)."""
        arrays = self.host if self.shared_cache and self.host is not None else [value.numpy() for value in self.past]
        return [array[:, :, :positions].copy() for array in arrays]


class OnnxVariant:
    """An artifacts folder written by ``glm4v-edge export onnx``, run by onnxruntime."""

    supports_prompt_cache = True

    def __init__(
        self, artifacts: str | Path, *, dtype: str = "fp32", vision_dtype: str | None = None,
        device: str | None = None, threads: int | None = None, name: str | None = None,
    ):
        self.folder = Path(artifacts)
        self.manifest = read_manifest(self.folder)
        self.device = device or default_onnx_device()
        parse_device(self.device)  # a bad device or a missing provider is named before anything loads
        vision_dtype = vision_dtype or dtype
        self.processor = checkpoint.load_processor(self.folder)
        self.config = checkpoint.load_config(self.folder)
        self.generation_config = checkpoint.load_generation_config(self.folder)
        self.tokens = checkpoint.SpecialTokens.from_checkpoint(
            self.config, self.processor.tokenizer, self.generation_config
        )
        self.vision = self._graph("vision_encoder", vision_dtype, threads)
        self.embed = self._graph("embed_tokens", dtype, threads)
        self.decoder = self._graph("decoder_model_merged", dtype, threads)
        self.past_names = kv_names(self.config.text_config.num_hidden_layers, PAST)
        self.present_names = kv_names(self.config.text_config.num_hidden_layers, PRESENT)
        # Exports that say so update the cache in place; older ones concatenate. A preallocated
        # cache must always have room for the new positions (the graph cannot grow it).
        self.shared_cache = self.manifest.get("kv_cache") in IN_PLACE_KV_CACHES
        self.cache_needs_room = self.manifest.get("kv_cache") in ROOM_KV_CACHES
        self.kv_heads, self.head_dim = kv_shape(self.config)
        self.context_length = context_length(self.config)
        self.prompt_cache: PromptCache | None = None  # set by the loader: reuse earlier prompts' cache
        self.prefill_tile = PREFILL_TILE[dtype]
        self.artifact_bytes = sum(self.graph_bytes(graph) for graph in (self.vision, self.embed, self.decoder))
        self.decoder_bytes = self.graph_bytes(self.decoder)
        suffix = "" if vision_dtype == dtype else f"+vision-{vision_dtype}"
        self.name = name or onnx_variant(dtype) + suffix
        self.details = {"dtype": dtype, "vision_dtype": vision_dtype, "device": self.device,
                        "providers": self.decoder.session.get_providers(), "onnxruntime": ort.__version__,
                        "decoder_bits_per_weight": matrix_bits_per_weight(self.decoder.path),
                        "weights": self.manifest.get("weights", {}).get(dtype)}

    def _graph(self, graph: str, dtype: str, threads: int | None) -> Graph:
        name = graph_file(graph, dtype)
        if name not in self.manifest.get("files", {}):
            exported = ", ".join(self.manifest.get("dtypes", [])) or "none"
            raise Glm4vEdgeError(f"{self.folder} has no {dtype} export ({name}); exported dtypes: {exported}")
        for file in self.graph_files(name):
            verify_file(self.folder, self.manifest, file)
        return Graph(self.folder / name, self.device, threads)

    @property
    def cache_owner(self) -> str:
        return f"{self.name}@{id(self):x}"

    def graph_files(self, name: str) -> list[str]:
        """A graph and its external-weights side file, as the manifest lists them."""
        return [file for file in (name, *external_data_files(name)) if file in self.manifest["files"]]

    def graph_bytes(self, graph: Graph) -> int:
        name = graph.path.relative_to(self.folder).as_posix()
        return sum(self.manifest["files"][file]["bytes"] for file in self.graph_files(name))

    # --- the three graphs -------------------------------------------------------------

    def vision_features(self, batch: dict[str, np.ndarray]) -> np.ndarray | None:
        """Merged features of every image, then every video frame pair, in prompt order."""
        return encode_media(self.vision, merge_size(self.config), batch)

    def input_embeddings(self, batch: dict[str, np.ndarray], reuse: PromptReuse | None = None) -> np.ndarray:
        """The prompt's embeddings with the media features in place; with ``reuse``, only of the
        positions after the cached prefix, each image's features from the cache when it has them."""
        start = reuse.reused if reuse else 0
        embeds = self.embed.run({EMBED_INPUT: batch["input_ids"][:, start:]})[0].numpy().astype(np.float32)
        if reuse is None:
            features = self.vision_features(batch)
        else:
            encode = functools.partial(encode_item, self.vision, merge_size(self.config), batch)
            pieces = reuse.media_rows(batch["mm_token_type_ids"], encode) if "mm_token_type_ids" in batch else []
            features = np.concatenate(pieces).astype(np.float32) if pieces else None
        if features is not None:
            media = batch["mm_token_type_ids"][:, start:] != 0
            if int(media.sum()) != len(features):
                raise Glm4vEdgeError(
                    f"the prompt has {int(media.sum())} media tokens but the images give {len(features)} features"
                )
            embeds[media] = features
        return embeds

    def decode(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
               past: list[ort.OrtValue], keep: int, in_place: bool = False) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """One decoder run; ``in_place``: ``past`` is a preallocated cache the new positions are
        written into (returned as the present)."""
        values = (embeds, mask.astype(np.int64), positions, np.array(keep, dtype=np.int64))
        inputs = {**dict(zip(DECODER_INPUTS, values)), **dict(zip(self.past_names, past))}
        logits, *present = self.decoder.run(inputs, dict(zip(self.present_names, past)) if in_place else None)
        return logits.numpy().astype(np.float32), past if in_place else present

    def new_cache(self, batch_size: int, positions: int = 0, prefix: list[np.ndarray] | None = None,
                  filled: int = 0) -> tuple[list[ort.OrtValue], list[np.ndarray]]:
        """A cache with room for ``positions`` (0: the empty cache a per-step graph joins to), its
        first ``filled`` positions copied from ``prefix`` and the rest zeros: a one-token step reads
        the whole room with the unwritten positions masked, and masked garbage could be NaN (zeroed
        pages cost nothing until written). Returns the values to bind and the host arrays
        behind them (on CPU the values point at those arrays; keep them alive together)."""
        dtype = self.decoder.float_type(self.past_names[0])
        arrays = []
        for index in range(len(self.past_names)):
            array = np.zeros((batch_size, self.kv_heads, positions, self.head_dim), dtype=dtype)
            if filled:
                array[:, :, :filled] = prefix[index][:, :, :filled]
            arrays.append(array)
        return [self.decoder.value(array) for array in arrays], arrays

    # --- prefill and decode steps ------------------------------------------------------

    def _numpy_batch(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def _positions(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return rope_positions(
            batch["input_ids"], batch["attention_mask"], batch.get("mm_token_type_ids"),
            batch.get("image_grid_thw"), batch.get("video_grid_thw"), merge_size(self.config),
        )

    def run_prompt(self, batch: dict[str, Any], keep: int | None = None, new_tokens: int = 0,
                   reuse: PromptReuse | None = None) -> tuple[np.ndarray, DecodeState]:
        """The prompt through the graphs: the last ``keep`` positions' logits (all prefilled
        positions when None) and the state to decode from. ``new_tokens``: with a graph that
        updates its cache in place, the cache is allocated once with room for that many more.
        ``reuse``: its cached prefix is copied in and only the positions after it run; their
        M-RoPE positions come from the whole prompt's (an image before them shifts them all)."""
        batch = self._numpy_batch(batch)
        positions, next_position = self._positions(batch)
        mask = batch["attention_mask"]
        start = reuse.reused if reuse else 0
        in_place = self.shared_cache and (new_tokens > 0 or self.cache_needs_room)
        cache, host = self.new_cache(len(mask), mask.shape[1] + new_tokens if in_place else start,
                                     prefix=reuse.entry.kv if start else None, filled=start)
        logits, present = self.decode(self.input_embeddings(batch, reuse), mask, positions[:, :, start:], cache,
                                      keep=keep or mask.shape[1] - start, in_place=in_place)
        state = DecodeState(present, mask, next_position, torch.from_numpy(batch["input_ids"]), in_place,
                            host if self.decoder.device == "cpu" else None)
        return logits, state

    def prefill(self, batch: dict[str, Any], new_tokens: int = 0,
                reuse: PromptReuse | None = None) -> tuple[np.ndarray, DecodeState]:
        """Run the prompt; return the last position's logits (batch, vocab) and the state."""
        logits, state = self.run_prompt(batch, keep=1, new_tokens=new_tokens, reuse=reuse)
        return logits[:, -1], state

    def step(self, state: DecodeState, token_ids: np.ndarray) -> np.ndarray:
        """Feed one new token per row; return the next logits (batch, vocab)."""
        ids = token_ids.reshape(-1, 1).astype(np.int64)
        embeds = self.embed.run({EMBED_INPUT: ids})[0].numpy()
        positions = np.broadcast_to(state.next_position[None, :, None], (3, len(ids), 1))
        written = state.attention_mask.shape[1]
        state.attention_mask = np.concatenate([state.attention_mask, np.ones_like(ids)], axis=1)
        if state.shared_cache and self.cache_needs_room and state.past[0].shape()[2] <= written:
            self._grow_cache(state, written)
        logits, state.past = self.decode(embeds, state.attention_mask, positions, state.past, keep=1,
                                         in_place=state.shared_cache)
        state.next_position = state.next_position + 1
        state.input_ids = torch.cat([state.input_ids, torch.from_numpy(ids)], dim=1)
        return logits[:, -1]

    def _grow_cache(self, state: DecodeState, written: int) -> None:
        """A full preallocated cache moved to one with twice the room (a prompt run with no room
        for a reply, then stepped): the graph writes into the cache it is given, it cannot grow it."""
        room = min(2 * written, max(self.context_length, written + 1))
        state.past, host = self.new_cache(len(state.attention_mask), room, prefix=state.kv(written), filled=written)
        state.host = host if self.decoder.device == "cpu" else None

    # --- the Variant protocol ------------------------------------------------------------

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
        logits, state = self.prefill(plan.batch, new_tokens=plan.config.max_new_tokens, reuse=plan.reuse)
        tokens = self._decode(plan, logits, state, stop)
        if plan.reuse is None:
            yield from tokens
            return
        # Stored once the stream ended between two tokens (done, stopped or closed by its
        # reader), when every position in the cache is whole; never after an error.
        try:
            yield from tokens
        except GeneratorExit:
            plan.reuse.remember(state.kv)
            raise
        plan.reuse.remember(state.kv)

    def _decode(self, plan: GenerationPlan, logits: np.ndarray, state: DecodeState,
                stop: threading.Event | None) -> Iterator[TokenEvent]:
        """The host loop: choose a token as ``generate`` does, yield it, feed it back."""
        processors = host_logits_processors(self.config, plan.config, state.input_ids,
                                            torch.as_tensor(plan.batch["attention_mask"]),
                                            LogitsProcessorList([plan.budget_processor]))
        for produced in range(1, plan.config.max_new_tokens + 1):
            if stop is not None and stop.is_set():
                return
            scores = processors(state.input_ids, torch.from_numpy(logits))
            token = int(choose_tokens(scores, bool(plan.config.do_sample))[0])
            if token in self.tokens.eos:
                return
            yield plan.reply.event(token)
            if produced < plan.config.max_new_tokens:
                logits = self.step(state, np.array([token]))

    def encode_vision(self, batch: dict[str, Any]) -> None:
        self.vision_features(self._numpy_batch(batch))

    def prompt_logits(self, batch: dict[str, Any]) -> np.ndarray:
        return self.prefill(batch)[0]

    def forward_logits(self, batch: dict[str, Any]) -> np.ndarray:
        return self.run_prompt(batch)[0]
