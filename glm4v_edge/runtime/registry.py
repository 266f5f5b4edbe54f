"""Every variant name registered in one place: name -> loader, and what the variant can do.

Callers (CLI, benchmark, demo) ask for a variant by name; they never branch on its kind. What
a variant can do is known before it is loaded (``measurable``), so the benchmark refuses a
variant it cannot score before starting anything. Loaders import their runtime when called:
listing names costs no torch, onnxruntime or openai import.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.hub import artifacts_folder, artifacts_manifest, pinned
from glm4v_edge.manifest import read_manifest, verify_file
from glm4v_edge.names import (
    GPTQ_BITS,
    GPTQ_METHODS,
    ONNX_DTYPES,
    REMOTE,
    REMOTE_URL_ENV,
    TORCH_DTYPES,
    onnx_variant,
    quantized_variant,
    torch_variant,
)
from glm4v_edge.progress import SILENT, Progress
from glm4v_edge.runtime.variant import Variant

if TYPE_CHECKING:
    from glm4v_edge.runtime.prompt_cache import PromptCache

Loader = Callable[..., Variant]


@dataclass(frozen=True)
class Registered:
    load: Loader
    requires: tuple[str, ...]  # the modules its runtime imports
    extra: str  # the glm4v-edge extra that installs them
    measurable: bool = True  # runs here on its own processor: scored and stage-timed by the benchmark
    why_not: str = ""  # when not measurable: one line saying why
    from_build: bool = False  # loaded from an artifacts folder (export / quantize), not from the source


VARIANTS: dict[str, Registered] = {}


def register(name: str, loader: Loader, requires: tuple[str, ...], extra: str, *, measurable: bool = True,
             why_not: str = "", from_build: bool = False) -> None:
    VARIANTS[name] = Registered(loader, requires, extra, measurable, why_not, from_build)


def variant_names() -> list[str]:
    return sorted(VARIANTS)


def missing_packages(name: str) -> str | None:
    """What this environment lacks to run variant ``name``, as one line (None: nothing)."""
    check_known([name])
    entry = VARIANTS[name]
    missing = [module for module in entry.requires if not _importable(module)]
    if not missing:
        return None
    return f"needs {', '.join(missing)}: pip install 'glm4v-edge[{entry.extra}]'"


def unavailable(name: str, device: str) -> str | None:
    """Why variant ``name`` cannot run on ``device`` here (None: it can): a missing package, or
    ONNX on CUDA without onnxruntime-gpu's CUDA execution provider."""
    missing = missing_packages(name)
    if missing or not name.startswith("onnx-") or not device.startswith("cuda"):
        return missing
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime-gpu not installed (this onnxruntime has no CUDA execution provider)"
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: the module is blocked (sys.modules[name] is None)
        return False


def check_known(names: list[str]) -> None:
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise Glm4vEdgeError(f"unknown variant(s): {', '.join(unknown)}; choose from: {', '.join(variant_names())}")


def check_measurable(names: list[str]) -> None:
    """Refuse, in one line, any variant the benchmark cannot score or time."""
    check_known(names)
    for name in names:
        if not VARIANTS[name].measurable:
            raise Glm4vEdgeError(f"{name} cannot be benchmarked: {VARIANTS[name].why_not}")


def load_variant(name: str, model: str | Path | None = None, *, prompt_cache: PromptCache | None = None,
                 **options) -> Variant:
    """Load variant ``name`` of ``model`` (hub id or folder; None: the embedded tiny model).
    ``prompt_cache``: later requests reuse earlier ones' key/value cache and image features, in
    every variant that can (a local one with a dynamic cache); None: none kept."""
    check_known([name])
    variant = VARIANTS[name].load(model, **options)
    if prompt_cache is not None and getattr(variant, "supports_prompt_cache", False):
        variant.prompt_cache = prompt_cache
    return variant


def load_from(name: str, model: str | Path | None, artifacts: str | Path | None, *,
              remote_url: str | None = None, remote_model: str | None = None, cpu_profile: bool = True,
              prompt_cache: PromptCache | None = None, progress: Progress = SILENT, **options) -> Variant:
    """Load ``name`` from a build: the artifacts (a folder, or ``user/repo[@revision]`` on the
    hub, of which only the files this variant opens are fetched) go to the variants they hold,
    the remote variant gets the endpoint, the rest load ``model`` (the source checkpoint).
    ``cpu_profile``: on CPU, images are limited to the CPU profile's size (``cpu_profile.py``).
    ``prompt_cache``: as for ``load_variant``."""
    from glm4v_edge.runtime.cpu_profile import apply_max_pixels, max_pixels_for

    check_known([name])
    from_artifacts = artifacts is not None and VARIANTS[name].from_build and name in built_variants(artifacts)
    if from_artifacts:
        options["artifacts"] = artifacts_folder(artifacts, [name], options.get("vision_dtype"), progress)
    if name == REMOTE:
        model = remote_model
        options["url"] = remote_url
    variant = load_variant(name, model, prompt_cache=prompt_cache, **options)
    if cpu_profile and name != REMOTE:  # a remote server sizes images with its own processor
        apply_max_pixels(variant.processor, max_pixels_for(getattr(variant, "device", "cpu")))
    if from_artifacts and hasattr(variant, "details"):
        variant.details["artifacts"] = pinned(artifacts)  # a hub repo's commit, as read
    return variant


def built_variants(artifacts: str | Path) -> list[str]:
    """The variant names a build holds, from its manifest (ONNX precisions, then GPTQ)."""
    manifest = artifacts_manifest(artifacts)
    return [*(onnx_variant(dtype) for dtype in manifest.get("dtypes", [])), *manifest.get("variants", {})]


def check_built(names: list[str], artifacts: str | Path) -> None:
    """Refuse, in one line, a variant that comes from a build the artifacts folder does not hold."""
    wanted = [name for name in names if VARIANTS[name].from_build]
    if wanted:
        built = built_variants(artifacts)
        if missing := [name for name in wanted if name not in built]:
            raise Glm4vEdgeError(f"{artifacts} holds no {', '.join(missing)} "
                                 f"(built there: {', '.join(built) or 'none'})")


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


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _torch_loader(dtype_name: str | None, cache: str | None = None, compiled: bool = False) -> Loader:
    def load(model, device: str | None = None, artifacts: str | Path | None = None, threads: int | None = None):
        import torch

        from glm4v_edge.runtime.torch_variant import TorchVariant

        if artifacts is not None:
            raise Glm4vEdgeError("torch variants load a checkpoint: pass --model, not --artifacts")
        _set_threads(threads)
        dtype = None if dtype_name is None else {"fp32": torch.float32, "bf16": torch.bfloat16,
                                                 "fp16": torch.float16}[dtype_name]
        return TorchVariant(model, dtype=dtype, device=device, cache=cache, compiled=compiled)
    return load


def _onnx_loader(dtype: str) -> Loader:
    def load(model, device: str | None = None, artifacts: str | Path | None = None, threads: int | None = None,
             vision_dtype: str | None = None):
        from glm4v_edge.runtime.onnx_variant import OnnxVariant

        folder = artifacts or model
        if folder is None:
            raise Glm4vEdgeError(f"{onnx_variant(dtype)} needs an artifacts folder made by `glm4v-edge export onnx` "
                                 "(pass --artifacts FOLDER)")
        return OnnxVariant(folder, dtype=dtype, vision_dtype=vision_dtype, device=device, threads=threads)
    return load


def _gptq_loader(name: str) -> Loader:
    def load(model, device: str | None = None, artifacts: str | Path | None = None, threads: int | None = None):
        from glm4v_edge.runtime.torch_variant import TorchVariant

        if artifacts is not None:
            model = verified_subfolder(Path(artifacts), name)
        elif model is None:
            raise Glm4vEdgeError(f"{name} needs a GPTQ checkpoint: --artifacts FOLDER (made by `glm4v-edge quantize "
                                 "gptq`) or --model DIR_OR_HUB_ID")
        _set_threads(threads)
        return TorchVariant(model, device=device, name=name)
    return load


def _remote_loader(model, device: str | None = None, artifacts: str | Path | None = None,
                   threads: int | None = None, url: str | None = None, api_key: str | None = None):
    from glm4v_edge.runtime.remote_variant import RemoteVariant

    url = url or os.environ.get(REMOTE_URL_ENV)
    if not url:
        raise Glm4vEdgeError(f"the remote variant needs an endpoint URL: set {REMOTE_URL_ENV} "
                             "(or `glm4v-edge demo --remote-url`)")
    return RemoteVariant(url, model=str(model) if model is not None else None, api_key=api_key)


TORCH = ("torch", "transformers")
register(torch_variant(None), _torch_loader(None), TORCH, "all")  # fp32 on CPU, bf16 on CUDA
for _dtype in TORCH_DTYPES:
    register(torch_variant(_dtype), _torch_loader(_dtype), TORCH, "all")
    # transformers' static KV cache, as generated eagerly and with the decode step compiled
    register(torch_variant(_dtype) + "-static", _torch_loader(_dtype, cache="static"), TORCH, "all")
    register(torch_variant(_dtype) + "-compiled", _torch_loader(_dtype, cache="static", compiled=True), TORCH, "all")
for _dtype in ONNX_DTYPES:
    register(onnx_variant(_dtype), _onnx_loader(_dtype), (*TORCH, "onnxruntime"), "onnx", from_build=True)
for _method in GPTQ_METHODS:
    for _bits in GPTQ_BITS:
        _name = quantized_variant(_method, _bits)
        register(_name, _gptq_loader(_name), (*TORCH, "gptqmodel", "optimum"), "gptq", from_build=True)
register(REMOTE, _remote_loader, ("openai",), "demo", measurable=False,  # --model: the served model's id
         why_not="it streams text from a server (no logits, no stage timings here); benchmark the served "
                 "variant on the serving machine")
