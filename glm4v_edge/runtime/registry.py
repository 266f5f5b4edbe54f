"""Every variant kind registered in one place: name -> loader.

Callers (CLI, benchmark, demo) ask for a variant by name and get a ``Variant``; they never
branch on what kind it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.manifest import DTYPE_SUFFIX, read_manifest, verify_file
from glm4v_edge.quant.settings import BITS
from glm4v_edge.runtime.torch_variant import TorchVariant
from glm4v_edge.runtime.variant import Variant

Loader = Callable[..., Variant]
LOADERS: dict[str, Loader] = {}
REMOTE = "remote"
REMOTE_URL_ENV = "GLM4V_EDGE_REMOTE_URL"  # e.g. http://localhost:8000/v1 (vLLM, SGLang, glm4v-edge serve)


def register(name: str, loader: Loader) -> None:
    LOADERS[name] = loader


def variant_names() -> list[str]:
    return sorted(LOADERS)


def load_variant(name: str, model: str | Path | None = None, **options) -> Variant:
    """Load variant ``name`` of ``model`` (hub id or folder; None: the embedded tiny model)."""
    if name not in LOADERS:
        raise Glm4vEdgeError(f"unknown variant {name!r}; choose one of: {', '.join(variant_names())}")
    return LOADERS[name](model, **options)


def load_from(name: str, model: str | Path | None, artifacts: str | Path | None, *,
              remote_url: str | None = None, remote_model: str | None = None, **options) -> Variant:
    """Load ``name`` from a build: the artifacts folder goes to the variants it holds, the
    remote variant gets the endpoint, the rest load ``model`` (the source checkpoint)."""
    if artifacts is not None and name in built_variants(artifacts):
        options["artifacts"] = artifacts
    if name == REMOTE:
        model = remote_model
        options["url"] = remote_url
    return load_variant(name, model, **options)


def _torch_loader(dtype: torch.dtype | None) -> Loader:
    def load(model, device: str | None = None, artifacts: str | Path | None = None,
             threads: int | None = None) -> Variant:
        if artifacts is not None:
            raise Glm4vEdgeError("torch variants load a checkpoint: pass --model, not --artifacts")
        if threads:
            torch.set_num_threads(threads)
        return TorchVariant(model, dtype=dtype, device=device)
    return load


def _onnx_loader(dtype: str) -> Loader:
    def load(model, device: str | None = None, artifacts: str | Path | None = None,
             threads: int | None = None, vision_dtype: str | None = None) -> Variant:
        from glm4v_edge.runtime.onnx_variant import OnnxVariant  # onnxruntime only when asked for

        folder = artifacts or model
        if folder is None:
            raise Glm4vEdgeError(f"{onnx_name(dtype)} needs an artifacts folder made by `glm4v-edge export onnx` "
                                 "(pass --artifacts FOLDER)")
        return OnnxVariant(folder, dtype=dtype, vision_dtype=vision_dtype, device=device, threads=threads)
    return load


def _gptq_loader(name: str) -> Loader:
    def load(model, device: str | None = None, artifacts: str | Path | None = None,
             threads: int | None = None) -> Variant:
        if artifacts is not None:
            model = verified_subfolder(Path(artifacts), name)
        elif model is None:
            raise Glm4vEdgeError(f"{name} needs a GPTQ checkpoint: --artifacts FOLDER (made by `glm4v-edge quantize "
                                 "gptq`) or --model DIR_OR_HUB_ID")
        if threads:
            torch.set_num_threads(threads)
        return TorchVariant(model, device=device, name=name)
    return load


def _remote_loader(model, device: str | None = None, artifacts: str | Path | None = None,
                   threads: int | None = None, url: str | None = None, api_key: str | None = None) -> Variant:
    from glm4v_edge.runtime.remote_variant import RemoteVariant  # openai only when asked for

    url = url or os.environ.get(REMOTE_URL_ENV)
    if not url:
        raise Glm4vEdgeError(f"the remote variant needs an endpoint URL: set {REMOTE_URL_ENV} "
                             "(or `glm4v-edge demo --remote-url`)")
    return RemoteVariant(url, model=str(model) if model is not None else None, api_key=api_key)


def verified_subfolder(artifacts: Path, name: str) -> Path:
    """The folder of variant ``name`` inside an artifacts folder, every file checked against the manifest."""
    manifest = read_manifest(artifacts)
    entry = manifest.get("variants", {}).get(name)
    if entry is None:
        built = ", ".join(manifest.get("variants", {})) or "none"
        raise Glm4vEdgeError(f"{artifacts} has no {name} (built there: {built}); run `glm4v-edge quantize gptq`")
    prefix = f"{entry['folder']}/"
    for file_name in manifest["files"]:
        if file_name.startswith(prefix):
            verify_file(artifacts, manifest, file_name)
    return artifacts / entry["folder"]


def built_variants(artifacts: str | Path) -> list[str]:
    """The variant names an artifacts folder holds, from its manifest (ONNX precisions, then GPTQ)."""
    manifest = read_manifest(Path(artifacts))
    return [*(onnx_name(dtype) for dtype in manifest.get("dtypes", [])), *manifest.get("variants", {})]


def onnx_name(dtype: str) -> str:
    return f"onnx-{dtype}"


register("torch", _torch_loader(None))  # fp32 on CPU, bf16 on CUDA
register("torch-fp32", _torch_loader(torch.float32))
register("torch-bf16", _torch_loader(torch.bfloat16))
register("torch-fp16", _torch_loader(torch.float16))
for _dtype in DTYPE_SUFFIX:
    register(onnx_name(_dtype), _onnx_loader(_dtype))
for _bits in BITS:
    register(f"gptq-int{_bits}", _gptq_loader(f"gptq-int{_bits}"))
    register(f"rtn-int{_bits}", _gptq_loader(f"rtn-int{_bits}"))  # GPTQModel's round-to-nearest, same format
register(REMOTE, _remote_loader)  # --model: the served model's id (default: the server's first)
