"""A build's ONNX graphs of one precision, for the measurements that open graphs themselves:
checked (one-line errors) before anything loads, and as a local folder; and the CPU session
each of those measurements runs a graph in."""

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


def cpu_session(graph, threads: int, profile_prefix: Path | None = None, configure=None):
    """An onnxruntime CPU session on ``threads`` intra-op threads for ``graph`` (a path, or an
    ``onnx.ModelProto``), quiet; with ``profile_prefix``, its profiler on (write with end_profiling);
    ``configure(options)``: more session options set before it opens."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if configure is not None:
        configure(options)
    source = str(graph) if isinstance(graph, (str, Path)) else graph.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
