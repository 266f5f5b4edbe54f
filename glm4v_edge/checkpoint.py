"""Load any GLM-4.1V checkpoint (hub id or folder) and read its token ids from the config.

The embedded tiny model goes through exactly the same ``from_pretrained`` calls as
``zai-org/GLM-4.1V-9B-Thinking``. No ``trust_remote_code``; safetensors only.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    GenerationConfig,
    Glm4vForConditionalGeneration,
    PretrainedConfig,
)
from transformers import logging as transformers_logging

from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.hub import hub_error

HUB_ID = "zai-org/GLM-4.1V-9B-Thinking"
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SUPPORTED_MODEL_TYPES = ("glm4v",)


def embedded_model_dir() -> Path:
    """The trained tiny model that ships inside the package: every command's default."""
    return Path(str(resources.files("glm4v_edge.tiny").joinpath("checkpoint")))


def resolve_model(model: str | Path | None) -> str:
    """A local folder (checked) or a hub id, as a string ``from_pretrained`` accepts."""
    if model is None:
        return str(embedded_model_dir())
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise Glm4vEdgeError(f"model must be a folder or a hub id, not a file: {text}")
        if not (path / "config.json").is_file():
            raise Glm4vEdgeError(f"not a Hugging Face checkpoint folder (no config.json): {text}")
        return str(path)
    if HUB_ID_PATTERN.match(text) and not text.startswith((".", "~")):
        return text
    raise Glm4vEdgeError(f"model folder not found: {text}")


def _hub_error(model: str, error: Exception) -> Glm4vEdgeError:
    if Path(model).is_dir():
        return Glm4vEdgeError(f"cannot load checkpoint {model}: {first_line(error)}")
    return Glm4vEdgeError(f"cannot load '{model}' from the Hugging Face hub: {first_line(error)}")


@functools.cache
def check_hub_model(repo_id: str) -> None:
    """One quick request for the checkpoint's config.json, so that a hub problem is named in one
    line within ``HF_HUB_ETAG_TIMEOUT`` seconds (10 by default) instead of after the download
    client's retries. A checkpoint already in the local cache needs no request (offline use)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise Glm4vEdgeError(f"'{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             "download it on a connected machine or pass a local folder with --model")
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except EntryNotFoundError:
        raise Glm4vEdgeError(f"'{repo_id}' has no config.json: not a transformers checkpoint") from None
    except Exception as error:  # huggingface_hub's own errors and the HTTP client's
        raise hub_error(f"model '{repo_id}'", error) from None


def load_config(model: str | Path | None = None):
    """The checkpoint's config, refusing anything that is not GLM-4.1V."""
    name = resolve_model(model)
    if not Path(name).is_dir():
        check_hub_model(name)
    try:
        raw, _ = PretrainedConfig.get_config_dict(name)  # the JSON only: no class, no validation yet
    except (OSError, ValueError) as error:
        raise _hub_error(name, error) from None
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise Glm4vEdgeError(
            f"{name} is a '{model_type}' checkpoint; glm4v-edge needs GLM-4.1V (model_type 'glm4v')"
        )
    try:
        return AutoConfig.from_pretrained(name)
    except Exception as error:  # transformers' config validation raises several types
        raise Glm4vEdgeError(f"invalid config.json in {name}: {first_line(error)}") from None


def load_processor(model: str | Path | None = None):
    """The checkpoint's own processor: tokenizer, chat template, image and video processors."""
    name = resolve_model(model)
    load_config(name)
    try:
        return AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise _hub_error(name, error) from None


def load_generation_config(model: str | Path | None = None) -> GenerationConfig:
    name = resolve_model(model)
    try:
        return GenerationConfig.from_pretrained(name)
    except OSError:
        # Optional file: fall back to what the model config says.
        return GenerationConfig.from_model_config(load_config(name))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow there), bf16 on CUDA."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def source_dtype(config) -> torch.dtype:
    """The precision the checkpoint was published in (bf16 for GLM-4.1V), fp32 if unsaid."""
    dtype = getattr(config.text_config, "dtype", None) or getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load/save reports and progress bars: noise for a CLI user."""
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


@contextmanager
def kept_root_logger() -> Iterator[None]:
    """The root logger as it was, whatever the block imports: gptqmodel and onnxruntime's int4
    quantizer run ``logging.basicConfig(level=INFO)`` at import, which would print every graph
    pass of a later export for the rest of the process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@contextmanager
def silenced_output() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null (library chatter, C-level included)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def local_checkpoint(model: str) -> Path:
    """The folder holding ``model``'s files: the folder itself, or the hub snapshot in the local
    cache (downloaded once, as ``from_pretrained`` would)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    except Exception as error:  # the hub client's many error types; check_hub_model named the usual ones
        raise _hub_error(model, error) from None


def is_quantized(model: str) -> bool:
    return getattr(load_config(model), "quantization_config", None) is not None


def load_model(
    model: str | Path | None = None, dtype: torch.dtype | None = None, device: str | None = None
) -> Glm4vForConditionalGeneration:
    name = resolve_model(model)
    load_config(name)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    with quiet_transformers():
        try:
            if is_quantized(name):
                # A GPTQ checkpoint picks its kernel for the device it is loaded on: load it there.
                # GPTQModel prints a banner and kernel logs on stdout/stderr: keep the CLI clean.
                with silenced_output():
                    loaded = Glm4vForConditionalGeneration.from_pretrained(
                        name, dtype=dtype, use_safetensors=True, device_map=device)
            else:
                loaded = Glm4vForConditionalGeneration.from_pretrained(name, dtype=dtype, use_safetensors=True)
        except (OSError, ValueError) as error:
            raise _hub_error(name, error) from None
        except ImportError as error:  # a GPTQ checkpoint without GPTQModel/optimum installed
            raise Glm4vEdgeError(f"{name} needs: pip install 'glm4v-edge[gptq]' ({first_line(error)})") from None
    return loaded.to(device).eval()


@dataclass(frozen=True)
class SpecialTokens:
    """Every id the runtime needs, read from the config and the tokenizer, never hard-coded."""

    image: int
    video: int
    image_start: int
    image_end: int
    video_start: int
    video_end: int
    think_open: int
    think_close: int
    answer_open: int
    eos: tuple[int, ...]
    pad: int

    @classmethod
    def from_checkpoint(cls, config, tokenizer, generation_config: GenerationConfig) -> SpecialTokens:
        def token(text: str) -> int:
            token_id = tokenizer.convert_tokens_to_ids(text)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise Glm4vEdgeError(f"the tokenizer has no {text} token; is this a GLM-4.1V checkpoint?")
            return token_id

        eos = generation_config.eos_token_id
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,) if eos is not None else (tokenizer.eos_token_id,)
        pad = generation_config.pad_token_id
        return cls(
            image=config.image_token_id,
            video=config.video_token_id,
            image_start=config.image_start_token_id,
            image_end=config.image_end_token_id,
            video_start=config.video_start_token_id,
            video_end=config.video_end_token_id,
            think_open=token("<think>"),
            think_close=token("</think>"),
            answer_open=token("<answer>"),
            eos=eos,
            pad=pad if pad is not None else eos[0],
        )
