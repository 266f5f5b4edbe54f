"""A build's ONNX graphs of one precision, for the measurements that open graphs themselves:
checked (one-line errors) before anything loads, and as a local folder."""

from __future__ import annotations

from pathlib import Path


def check_onnx_build(artifacts: str | Path, dtype: str) -> str:
    """The variant name of ``dtype``'s graphs, once the build is known to hold them."""
    from glm4v_edge.names import onnx_variant
    from glm4v_edge.runtime.registry import check_built, check_known

    name = onnx_variant(dtype)
    check_known([name])
    check_built([name], artifacts)
    return name


def onnx_folder(artifacts: str | Path, dtype: str) -> Path:
    """A local folder with ``dtype``'s graphs: the build itself, or a hub repo's files fetched."""
    from glm4v_edge.hub import artifacts_folder

    return artifacts_folder(artifacts, [check_onnx_build(artifacts, dtype)])
