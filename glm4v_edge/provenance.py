"""Where an artifact came from: its source checkpoint and the tools that built it."""

from __future__ import annotations

import platform
from importlib import metadata

CORE_TOOLS = ("torch", "transformers", "glm4v-edge")


def tool_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python, the core libraries and ``extra`` (the tools that built the artifact)."""
    versions = {"python": platform.python_version()}
    for tool in (*CORE_TOOLS, *extra):
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "not installed"
    return versions


def source_record(source: str, config) -> dict:
    """Where the weights came from: the hub id and commit, or the local folder."""
    record = {"model": source, "model_type": config.model_type}
    revision = getattr(config, "_commit_hash", None)
    if revision:
        record["revision"] = revision
    return record
