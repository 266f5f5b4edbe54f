"""Names every layer shares: the ONNX files and their inputs/outputs, and the variant names.

Plain constants and string helpers only (no torch, no onnxruntime), so anything may import them.
"""

from __future__ import annotations

MANIFEST_FILE = "manifest.json"  # every build's record of its files (glm4v_edge.manifest)
# ONNX file names follow transformers.js / onnx-community: onnx/<graph><suffix>.onnx
GRAPHS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
DTYPE_SUFFIX = {"fp32": "", "fp16": "_fp16", "q4": "_q4", "q4f16": "_q4f16", "int8": "_int8"}
ONNX_DTYPES = tuple(DTYPE_SUFFIX)
EXTERNAL_DATA_SUFFIXES = (".data", "_data")  # torch.onnx writes name.onnx.data, onnx name.onnx_data

# The graphs' inputs and outputs (onnx-community's VLM exports use the same names).
VISION_INPUTS = ("pixel_values", "grid_thw", "position_ids")
VISION_OUTPUT = "image_features"
EMBED_INPUT, EMBED_OUTPUT = "input_ids", "inputs_embeds"
DECODER_INPUTS = ("inputs_embeds", "attention_mask", "position_ids", "num_logits_to_keep")
LOGITS = "logits"
PAST, PRESENT = "past_key_values", "present"
# manifest "kv_cache": "preallocated-masked": the decoder writes the new positions into the cache it
# is given, which must have room for them, bound as both past and present, and a one-token step
# reads the whole cache with the unwritten positions masked, so they must be finite: the runtime
# zero-fills them (contrib_ops.cached_attention). "preallocated" (earlier exports): the same, but
# the step reads only the written positions; "shared" (earlier, GroupQueryAttention): written in
# place when bound so, else concatenated; absent: it concatenates every step. A runtime that does
# not know a value runs the graph as a concatenating one, which fails instead of reading garbage.
MASKED_ROOM_KV_CACHE = "preallocated-masked"
PREALLOCATED_KV_CACHE = "preallocated"
SHARED_KV_CACHE = "shared"
ROOM_KV_CACHES = (MASKED_ROOM_KV_CACHE, PREALLOCATED_KV_CACHE)  # the graph cannot grow them
IN_PLACE_KV_CACHES = (*ROOM_KV_CACHES, SHARED_KV_CACHE)

# Variant names: torch (the checkpoint in transformers), onnx-<dtype>, gptq-int<bits> and
# rtn-int<bits> (GPTQModel checkpoints), remote (an OpenAI-compatible server).
TORCH_DTYPES = ("fp32", "bf16", "fp16")
GPTQ_BITS = (2, 3, 4, 8)  # what GPTQModel's GPTQ kernels pack
GPTQ_METHODS = ("gptq", "rtn")  # rtn: round-to-nearest in the same format, the baseline GPTQ must beat
REMOTE = "remote"
REMOTE_URL_ENV = "GLM4V_EDGE_REMOTE_URL"  # e.g. http://localhost:8000/v1 (vLLM, SGLang, glm4v-edge serve)


def graph_file(graph: str, dtype: str) -> str:
    """Path of one graph in one precision, relative to the artifacts folder."""
    from glm4v_edge.errors import Glm4vEdgeError

    if dtype not in DTYPE_SUFFIX:
        raise Glm4vEdgeError(f"unknown ONNX dtype {dtype!r}; choose from {', '.join(ONNX_DTYPES)}")
    return f"onnx/{graph}{DTYPE_SUFFIX[dtype]}.onnx"


def external_data_files(graph_path: str) -> tuple[str, ...]:
    """The names a graph's external-weights side file may have."""
    return tuple(graph_path + suffix for suffix in EXTERNAL_DATA_SUFFIXES)


def kv_names(layers: int, prefix: str) -> list[str]:
    """``prefix.N.key`` / ``prefix.N.value`` for every decoder layer, in graph order."""
    return [f"{prefix}.{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]


def torch_variant(dtype: str | None) -> str:
    return "torch" if dtype is None else f"torch-{dtype}"


def onnx_variant(dtype: str) -> str:
    return f"onnx-{dtype}"


def quantized_variant(method: str, bits: int) -> str:
    return f"{method}-int{bits}"


def files_for(manifest: dict, variant: str, vision_dtype: str | None = None) -> list[str]:
    """The files variant ``variant`` opens from a build, as its manifest lists them: an ONNX
    precision's three graphs (the vision encoder's in ``vision_dtype`` when given) with their
    external data and the folder's config, tokenizer, processor and chat template; a GPTQ
    checkpoint's subfolder (a whole transformers checkpoint); nothing for the rest."""
    files = manifest.get("files", {})
    if variant.startswith("onnx-"):
        dtype = variant.removeprefix("onnx-")
        shared = [name for name in files if "/" not in name]
        graphs = [graph_file(graph, vision_dtype if graph == "vision_encoder" and vision_dtype else dtype)
                  for graph in GRAPHS]
        return shared + [name for graph in graphs for name in (graph, *external_data_files(graph)) if name in files]
    entry = manifest.get("variants", {}).get(variant)
    if entry is None:
        return []
    return [name for name in files if name.startswith(entry["folder"] + "/")]
