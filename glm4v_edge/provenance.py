"""Where an artifact came from: its source checkpoint and the tools that built it."""

from __future__ import annotations

import platform

from glm4v_edge.machine import package_versions

CORE_TOOLS = ("torch", "transformers", "glm4v-edge")


def tool_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python, the core libraries and ``extra`` (the tools that built the artifact)."""
    installed = package_versions((*CORE_TOOLS, *extra))
    return {"python": platform.python_version(),
            **{tool: version or "not installed" for tool, version in installed.items()}}


def source_record(source: str, config) -> dict:
    """Where the weights came from: the hub id and commit, or the local folder."""
    record = {"model": source, "model_type": config.model_type}
    revision = getattr(config, "_commit_hash", None)
    if revision:
        record["revision"] = revision
    return record
