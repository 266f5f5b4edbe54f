"""The typer options several commands share, spelled and explained once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glm4v_edge.runtime.prompt_cache import DEFAULT_PROMPT_CACHE_GB

ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Hub id (e.g. zai-org/GLM-4.1V-9B-Thinking) "
                                                 "or checkpoint folder. Default: the embedded tiny model.")]
VariantOption = Annotated[str, typer.Option("--variant", help="Which variant to run (see `glm4v-edge variants`).")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... Default: cuda if available.")]
ArtifactsOption = Annotated[Path | None, typer.Option(
    "--artifacts", help="A folder made by `glm4v-edge build` / `export onnx` / `quantize gptq`, for its variants, or "
    "its hub repo, user/repo[@revision] (only the files the variant opens are downloaded).")]
ThreadsOption = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads. Default: the runtime's.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace an existing output folder.")]
HostOption = Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")]
ConcurrencyOption = Annotated[int, typer.Option(min=1, help="Generations at once per variant; more wait.")]
PromptCacheOption = Annotated[float | None, typer.Option(
    "--prompt-cache-gb", min=0, help="GiB kept of earlier requests' key/value cache and image features, reused by "
    f"requests that share their prefix (a conversation's next turn). 0: off. Default: {DEFAULT_PROMPT_CACHE_GB:g}.")]
