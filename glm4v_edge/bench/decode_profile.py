"""Where one decode step of an exported decoder goes, by operator type, with onnxruntime's
profiler (``glm4v-edge bench decode-profile``).

Each build's decoder graph runs one new token after ``past`` cached positions (random embeddings
and cache: the work does not depend on the values), ``steps`` times after warm-up, on ``threads``
intra-op threads, as ``generate`` runs it: a cache written in place (manifest ``kv_cache``) is
bound as both past and present, with room for the new position. Recorded per graph: the median
and p90 step time without profiling, then the profiler's kernel time per operator type per step
(profiling adds overhead: read the shares).
"""

from __future__ import annotations

import collections
import itertools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from glm4v_edge.bench.records import heading, new_record, plain, record_name, table
from glm4v_edge.progress import SILENT, Progress

KIND = "decode-profile"
WARM_UP_STEPS = 3
FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
CONTROL_FLOW = {"If", "Loop", "Scan"}  # their kernel events contain their branches' node events


@dataclass(frozen=True)
class DecodeProfileSettings:
    artifacts: dict[str, Path]  # label -> an `export onnx` folder (or hub repo)
    dtype: str = "q4"
    past: int = 128  # cached positions before the timed token
    steps: int = 40
    threads: int | None = None  # None: every core this process may use
    out: Path | None = None
    name: str | None = None


def decode_inputs(session, past: int, room: int | None = None) -> dict[str, np.ndarray]:
    """One new token's inputs after ``past`` random cached positions, shaped as the graph says;
    ``room``: the cache's positions (a preallocated cache holds the new one too; default ``past``)."""
    rng = np.random.default_rng(0)
    inputs = {}
    for value in session.get_inputs():
        if value.name == "inputs_embeds":
            inputs[value.name] = rng.standard_normal((1, 1, value.shape[-1])).astype(FLOAT_TYPES[value.type])
        elif value.name == "attention_mask":
            inputs[value.name] = np.ones((1, past + 1), np.int64)
        elif value.name == "position_ids":
            inputs[value.name] = np.full((3, 1, 1), past, np.int64)
        elif value.name == "num_logits_to_keep":
            inputs[value.name] = np.array(1, np.int64)
        else:  # past_key_values.N.key / value: (batch, kv_heads, room, head_dim)
            shape = (1, value.shape[1], room or past, value.shape[3])
            inputs[value.name] = rng.standard_normal(shape).astype(FLOAT_TYPES[value.type])
    return inputs


def step_runner(session, inputs: dict[str, np.ndarray], in_place: bool) -> Callable[[], object]:
    """One decode step of ``session`` on ``inputs``; ``in_place``: each present output bound to
    its past input's buffer (the arrays in ``inputs``), as ``generate`` binds an in-place cache."""
    if not in_place:
        return lambda: session.run(None, inputs)
    import onnxruntime as ort

    from glm4v_edge.names import PAST, PRESENT

    binding = session.io_binding()
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in inputs.items()}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    for output in session.get_outputs():
        if output.name.startswith(PRESENT):
            binding.bind_ortvalue_output(output.name, values[PAST + output.name.removeprefix(PRESENT)])
        else:
            binding.bind_output(output.name)
    return lambda: session.run_with_iobinding(binding)


def warm_up(step: Callable[[], object]) -> None:
    for _ in range(WARM_UP_STEPS):
        step()


def timed_ms(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1000


def step_times_ms(step: Callable[[], object], steps: int) -> list[float]:
    warm_up(step)
    return [timed_ms(step) for _ in range(steps)]


def kernel_events(events: list[dict]) -> Iterator[dict]:
    """A profile's node kernel events in time order (each names its node ``<node>_kernel_time``,
    its op in args). A control-flow node's event spans those of the nodes its branch ran, which
    are reported too; its ``dur`` here is its own time (choosing and starting the branch)."""
    kernels = sorted((event for event in events if event.get("cat") == "Node"
                      and event["name"].endswith("_kernel_time")), key=lambda event: event["ts"])
    for index, event in enumerate(kernels):
        if event["args"]["op_name"] in CONTROL_FLOW:
            yield {**event, "dur": event["dur"] - branch_time(event, kernels[index + 1:])}
        else:
            yield event


def branch_time(control_flow: dict, following: list[dict]) -> int:
    """The time of the node events that ran inside ``control_flow``'s span (``following``: the
    kernel events after it, in time order)."""
    end = control_flow["ts"] + control_flow["dur"]
    inner = itertools.takewhile(lambda event: event["ts"] < end, following)
    return sum(event["dur"] for event in inner if event["args"]["op_name"] not in CONTROL_FLOW)


def kernel_time_by_op(events: list[dict]) -> tuple[collections.Counter, collections.Counter]:
    """Microseconds and node runs per operator type, from a profile's kernel events."""
    by_op, nodes = collections.Counter(), collections.Counter()
    for event in kernel_events(events):
        by_op[event["args"]["op_name"]] += event["dur"]
        nodes[event["args"]["op_name"]] += 1
    return by_op, nodes


@dataclass
class TimedGraph:
    """One build's decoder, ready to step: its session, inputs and whether its cache is in place."""

    path: Path
    inputs: dict[str, np.ndarray]
    in_place: bool
    step: Callable[[], object] | None  # None once timed: its session's weights freed


def timed_graph(path: Path, past: int, threads: int) -> TimedGraph:
    from glm4v_edge.bench.onnx_build import cpu_session
    from glm4v_edge.manifest import read_manifest
    from glm4v_edge.names import IN_PLACE_KV_CACHES

    session = cpu_session(path, threads)
    in_place = read_manifest(path.parent.parent).get("kv_cache") in IN_PLACE_KV_CACHES
    inputs = decode_inputs(session, past, past + 1 if in_place else past)
    return TimedGraph(path, inputs, in_place, step_runner(session, inputs, in_place))


def interleaved_step_times_ms(graphs: dict[str, TimedGraph], steps: int) -> dict[str, list[float]]:
    """``steps`` decode steps of each graph, the graphs taking turns, in reversed order every other
    turn: a shared machine's drift falls on every build alike."""
    for graph in graphs.values():
        warm_up(graph.step)
    times = {label: [] for label in graphs}
    for turn in range(steps):
        for label in (list(graphs) if turn % 2 == 0 else list(reversed(graphs))):
            times[label].append(timed_ms(graphs[label].step))
    return times


def profile_graph(graph: TimedGraph, past: int, steps: int, threads: int, times: list[float]) -> dict:
    """The profiler's kernel time by operator type, in a second session (profiling slows every
    step), beside ``times``: the unprofiled step times."""
    from glm4v_edge.bench.onnx_build import cpu_session

    with tempfile.TemporaryDirectory() as folder:
        profiled = cpu_session(graph.path, threads, Path(folder) / "profile")
        step_times_ms(step_runner(profiled, graph.inputs, graph.in_place), steps)
        by_op, nodes = kernel_time_by_op(json.loads(Path(profiled.end_profiling()).read_text()))
    runs, total = steps + WARM_UP_STEPS, sum(by_op.values())
    return {
        "graph": str(graph.path), "past": past, "threads": threads, "steps": steps,
        "cache_in_place": graph.in_place,
        "step_ms": {"median": round(float(np.median(times)), 2), "p90": round(float(np.percentile(times, 90)), 2)},
        "profiled_kernel_ms_per_step": round(total / runs / 1000, 2),
        "by_op": {op: {"ms_per_step": round(us / runs / 1000, 3), "nodes": nodes[op] // runs,
                       "share": round(us / total, 3)} for op, us in by_op.most_common()},
    }


def decoder_graph(artifacts: str | Path, dtype: str) -> Path:
    from glm4v_edge.bench.onnx_build import onnx_folder
    from glm4v_edge.names import graph_file

    return onnx_folder(artifacts, dtype) / graph_file("decoder_model_merged", dtype)


def measure_decode_profile(settings: DecodeProfileSettings, progress: Progress = SILENT) -> dict:
    import onnxruntime as ort

    from glm4v_edge.bench.bandwidth import default_threads

    settings = replace(settings, threads=settings.threads or default_threads())
    paths = {label: decoder_graph(folder, settings.dtype) for label, folder in settings.artifacts.items()}
    progress.start(KIND, 1 + len(paths))
    progress.step(f"{settings.steps} steps of each build after {settings.past} cached positions, taking turns")
    graphs = {label: timed_graph(path, settings.past, settings.threads) for label, path in paths.items()}
    times = interleaved_step_times_ms(graphs, settings.steps)
    results = {}
    for label, graph in graphs.items():
        progress.step(f"{label}: profiled")
        graph.step = None  # its timed session goes: one extra copy of the weights at a time
        results[label] = profile_graph(graph, settings.past, settings.steps, settings.threads, times[label])
    name = record_name(settings.name, KIND, *settings.artifacts.values())
    record = new_record(KIND, name, "one decode step by operator type (onnxruntime profiler)", plain(settings))
    return {**record, "onnxruntime": ort.__version__, "results": results}


def markdown(record: dict, top: int = 4) -> str:
    rows = []
    for label, result in record["results"].items():
        ops = ", ".join(f"{op} {row['ms_per_step']:.2f} ({row['share']:.0%})"
                        for op, row in list(result["by_op"].items())[:top])
        rows.append([label, f"{result['step_ms']['median']:.2f} ({result['step_ms']['p90']:.2f})",
                     result["profiled_kernel_ms_per_step"], ops])
    lines = heading(record) + table(["build", "step ms (p90)", "profiled kernel ms/step",
                                     f"top {top} operators: ms/step (share)"], rows)
    settings = record["settings"]
    lines += ["", f"onnx-{settings['dtype']} decoder, one token after {settings['past']} cached positions, "
              f"{settings['threads']} threads, onnxruntime {record['onnxruntime']}."]
    return "\n".join(lines) + "\n"
