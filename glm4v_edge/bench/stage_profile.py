"""Where the first answer's time goes, stage by stage, beside what this machine allows
(``glm4v-edge bench stage-profile``).

One ONNX build answers a one-image question of ``size`` px: first timed as a user sees it
(warm-up, then time to first token and ms per reply token), then once more with onnxruntime's
profiler on every graph. Each stage (vision tower, prefill, one decode step) is split by operator
type, and its multiply-adds are counted from the shapes each node ran with: int8 arithmetic
(MatMulNBits at accuracy level 4, MatMulInteger and its fusions, ConvInteger) and float (MatMul,
Conv, attention). Its bound is the larger of those multiply-adds at this machine's measured
peaks and its weight bytes at the read-only bandwidth (``machine_peak.py``); what is left of
the time to first token after the graphs is the host's (processor, embedding lookups, copies
between graphs).

Beside the bound, each stage is put against the kernels it actually runs: every node's
multiply-adds at the measured rate of its own kernel (MatMulNBits 4-bit, 8-bit, MatMulInteger,
fp32), and its weights at MatMulNBits' one-row read rate. That is not a floor (a shape can run
its kernel a little faster than the peak's square GEMM); it says how much of the gap to the
bound is the kernel's own speed, which no graph or host change can recover.
"""

from __future__ import annotations

import collections
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from glm4v_edge.bench.decode_profile import kernel_events
from glm4v_edge.bench.machine_peak import DECODE_LOOP, FP32_KERNEL, INTEGER_KERNEL, nbits_kernel
from glm4v_edge.bench.records import heading, new_record, plain, record_name, table
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.progress import SILENT, Progress

KIND = "stage-profile"
# Counted from their shapes alone; DynamicQuantizeMatMul and MatMulIntegerToFloat are onnxruntime's
# fusions of MatMulInteger, so a fused node, absent from the file, is counted too.
MATMULS = {"MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
CONVS = {"Conv", "ConvInteger"}
INT8_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "ConvInteger"}  # + MatMulNBits, level 4


@dataclass(frozen=True)
class StageProfileSettings:
    artifacts: Path
    dtype: str = "q4"
    size: int = 784  # the image's side, px
    decode_steps: int = 8  # reply tokens after the first (the decode stage is their mean)
    threads: int | None = None  # None: every core this process may use
    gemm_size: int = 2048  # the peak's matrices, M = K = N (machine_peak.py)
    read_mib: int = 512  # the read-only loops' array
    out: Path | None = None
    name: str | None = None


@dataclass(frozen=True)
class NodeInfo:
    op: str
    kernel: str  # the machine peak's kernel whose arithmetic it runs (machine_peak.gemm_models)
    weight_shape: tuple[int, ...] | None  # Conv's kernel; MatMulNBits: (N, K)
    heads: tuple[int, int] | None  # GroupQueryAttention: (query heads, key/value heads)

    @property
    def int8(self) -> bool:
        return self.kernel != FP32_KERNEL


def kernel_of(op: str, attributes: dict) -> str:
    if op == "MatMulNBits" and attributes.get("accuracy_level") == 4:
        return nbits_kernel(attributes.get("bits", 4), attributes["block_size"])
    return INTEGER_KERNEL if op in INT8_OPS else FP32_KERNEL


def graph_nodes(path: Path) -> dict[str, NodeInfo]:
    """What the multiply-add count needs of each node that the profile's shapes do not say."""
    import onnx

    from glm4v_edge.export.precisions import every_node

    model = onnx.load(str(path), load_external_data=False)
    dims = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    nodes = {}
    for node in every_node(model.graph):
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = None
        if node.op_type == "MatMulNBits":
            weight = (attributes["N"], attributes["K"])
        elif node.op_type in CONVS and len(node.input) > 1:
            weight = dims.get(node.input[1])
        heads = (attributes["num_heads"], attributes["kv_num_heads"]) if node.op_type == "GroupQueryAttention" else None
        nodes[node.name] = NodeInfo(node.op_type, kernel_of(node.op_type, attributes), weight, heads)
    return nodes


def shapes_of(event: dict, key: str) -> list[list[int]]:
    return [next(iter(shape.values())) for shape in event["args"].get(key, [])]


def multiply_adds(info: NodeInfo, event: dict, past: int) -> int:
    """A node's multiply-adds from the shapes it ran with; ``past``: positions already cached
    before this run (GroupQueryAttention's buffer shape does not say how many are written)."""
    inputs, outputs = shapes_of(event, "input_type_shape"), shapes_of(event, "output_type_shape")
    if not inputs or not outputs:
        return 0
    if info.op == "MatMulNBits":
        n, k = info.weight_shape
        return int(np.prod(inputs[0][:-1])) * k * n
    if info.op in MATMULS:
        return int(np.prod(outputs[0])) * inputs[0][-1]
    if info.op in CONVS and info.weight_shape:
        return int(np.prod(outputs[0])) * int(np.prod(info.weight_shape[1:]))
    if info.op == "MultiHeadAttention" and len(inputs[0]) == 3:
        batch, rows, width = inputs[0]
        keys = inputs[1][1] if len(inputs) > 1 and len(inputs[1]) == 3 else inputs[1][2] if len(inputs) > 1 else rows
        return 2 * batch * rows * keys * width  # Q K^T, then the weights times V
    if info.op == "GroupQueryAttention" and info.heads:
        batch, rows, width = inputs[0]
        query_heads, kv_heads = info.heads
        packed = len(inputs) < 3 or width != shapes_of(event, "output_type_shape")[0][-1]
        head_dim = width // (query_heads + 2 * kv_heads) if packed else width // query_heads
        attended = rows * past + rows * (rows + 1) // 2  # causal: row i sees past + i + 1 positions
        return 2 * batch * query_heads * head_dim * attended
    return 0


def runs_of(events: list[dict]) -> list[dict]:
    return sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                  key=lambda e: e["ts"])


def stage(events: list[dict], run: dict, nodes: dict[str, NodeInfo], past: int) -> dict:
    """One graph run: its time, kernel time by operator type, multiply-adds (int8 / float, and
    by the kernel that ran them)."""
    end = run["ts"] + run["dur"]
    by_op, macs, by_kernel = collections.Counter(), collections.Counter(), collections.Counter()
    for event in kernel_events(events):
        if not run["ts"] <= event["ts"] <= end:
            continue
        op = event["args"]["op_name"]
        by_op[op] += event["dur"]
        info = nodes.get(event["name"].removesuffix("_kernel_time")) or NodeInfo(op, kernel_of(op, {}), None, None)
        count = multiply_adds(info, event, past)
        macs["int8" if info.int8 else "float"] += count
        by_kernel[info.kernel] += count
    return {"run_ms": run["dur"] / 1000, "kernel_ms": sum(by_op.values()) / 1000,
            "by_op_ms": {op: us / 1000 for op, us in by_op.most_common()}, "macs": dict(macs),
            "macs_by_kernel": {kernel: count for kernel, count in by_kernel.items() if count}}


def mean_stage(stages: list[dict]) -> dict:
    ops = {op for s in stages for op in s["by_op_ms"]}

    def mean_counts(field: str) -> dict:
        keys = {key for s in stages for key in s[field]}
        return {key: int(np.mean([s[field].get(key, 0) for s in stages])) for key in keys}

    return {"run_ms": float(np.mean([s["run_ms"] for s in stages])),
            "kernel_ms": float(np.mean([s["kernel_ms"] for s in stages])),
            "by_op_ms": dict(sorted(((op, float(np.mean([s["by_op_ms"].get(op, 0) for s in stages]))) for op in ops),
                                    key=lambda item: -item[1])),
            "macs": mean_counts("macs"), "macs_by_kernel": mean_counts("macs_by_kernel")}


def bounded(result: dict, weight_bytes: int, peak: dict) -> dict:
    """The stage beside its bounds: multiply-adds at the measured peaks, weight bytes at the
    read-only bandwidth; the bound is the larger (a stage needs both done)."""
    compute_ms = (result["macs"].get("int8", 0) / peak["int8_gmacs"]
                  + result["macs"].get("float", 0) / peak["fp32_gmacs"]) / 1e6
    read_ms = weight_bytes / (peak["read_bandwidth_gbs"] * 1e9) * 1000
    bound = max(compute_ms, read_ms)
    kernels_ms = at_kernel_rates(result["macs_by_kernel"], weight_bytes, peak)
    rounded = {key: round(value, 2) if isinstance(value, float) else value for key, value in result.items()
               if key != "by_op_ms"}
    return {**rounded, "by_op_ms": {op: round(ms, 3) for op, ms in result["by_op_ms"].items()},
            "compute_bound_ms": round(compute_ms, 2), "read_bound_ms": round(read_ms, 2),
            "bound_ms": round(bound, 2), "times_bound": round(result["run_ms"] / bound, 2) if bound else None,
            "kernel_rates_ms": round(kernels_ms, 2) if kernels_ms else None,
            "times_kernel_rates": round(result["run_ms"] / kernels_ms, 2) if kernels_ms else None}


def at_kernel_rates(macs_by_kernel: dict[str, int], weight_bytes: int, peak: dict) -> float | None:
    """ms the stage would take with each kernel at its measured rate (arithmetic) and the weights
    read at MatMulNBits' one-row rate, the larger; None when a kernel's rate was not measured."""
    rates = peak["gemm_gmacs"]
    if any(kernel not in rates for kernel in macs_by_kernel) or DECODE_LOOP not in peak["read_gbs"]:
        return None
    compute_ms = sum(count / rates[kernel] for kernel, count in macs_by_kernel.items()) / 1e6
    return max(compute_ms, weight_bytes / (peak["read_gbs"][DECODE_LOOP] * 1e9) * 1000)


def timed_answer(variant, question: dict, tokens: int) -> tuple[float, list[float]]:
    """Seconds to the first token, then each later token's ms."""
    from glm4v_edge.runtime.variant import Sampling

    start = time.perf_counter()
    stamps = []
    for _ in variant.generate([question], max_new_tokens=tokens, sampling=Sampling.greedy()):
        stamps.append(time.perf_counter())
    return stamps[0] - start, list(np.diff(stamps) * 1000)


def measure_stage_profile(settings: StageProfileSettings, progress: Progress = SILENT) -> dict:
    import onnxruntime as ort

    from glm4v_edge.bench.bandwidth import default_threads
    from glm4v_edge.bench.machine_peak import faster_reads, fastest_read, measure_machine_peak, read_bandwidths
    from glm4v_edge.bench.onnx_build import cpu_session, onnx_folder
    from glm4v_edge.bench.ttft import image_question
    from glm4v_edge.hub import pinned
    from glm4v_edge.machine import peak_rss_mib
    from glm4v_edge.runtime.cpu_profile import remove_max_pixels
    from glm4v_edge.runtime.inputs import build_batch
    from glm4v_edge.runtime.onnx_variant import OnnxVariant

    settings = replace(settings, threads=settings.threads or default_threads())
    progress.start(KIND, 6)
    progress.step(f"this machine's peaks on {settings.threads} threads")
    peak = measure_machine_peak(settings.threads, settings.gemm_size, settings.read_mib)
    progress.step(f"loading onnx-{settings.dtype}")
    variant = OnnxVariant(onnx_folder(settings.artifacts, settings.dtype), dtype=settings.dtype,
                          device="cpu", threads=settings.threads)
    remove_max_pixels(variant.processor)
    question = image_question(settings.size)
    batch = build_batch(variant.processor, [[question]])
    prompt_tokens = int(batch["input_ids"].shape[1])
    image_tokens = int(batch["image_grid_thw"].prod()) // variant.processor.image_processor.merge_size ** 2
    tokens = settings.decode_steps + 1
    progress.step(f"a {settings.size} px question: warm-up, then timed")
    timed_answer(variant, question, tokens)
    ttft_s, step_ms = timed_answer(variant, question, tokens)
    progress.step("once more with the profiler on every graph")
    graphs = {"vision": variant.vision, "embed": variant.embed, "decoder": variant.decoder}
    with tempfile.TemporaryDirectory() as folder:
        for name, graph in graphs.items():
            graph.session = None  # one copy of the weights at a time
            graph.session = cpu_session(graph.path, settings.threads, Path(folder) / name)
        profiled_ttft_s, _ = timed_answer(variant, question, tokens)
        events = {name: json.loads(Path(graph.session.end_profiling()).read_text()) for name, graph in graphs.items()}
    for graph in graphs.values():  # freed first, so the read loops do not add to the run's peak RSS
        graph.session = None
    progress.step("the read-only bandwidth again")  # each loop's faster sample bounds the stages
    samples = [peak["read_gbs"], read_bandwidths(settings.threads, settings.read_mib)]
    peak = {**peak, "read_gbs_samples": samples, "read_gbs": faster_reads(samples)}
    peak.update(fastest_read(peak["read_gbs"]))
    progress.step("counting multiply-adds")
    nodes = {name: graph_nodes(graph.path) for name, graph in graphs.items()}
    vision_runs, decoder_runs = runs_of(events["vision"]), runs_of(events["decoder"])
    vision = mean_stage([stage(events["vision"], run, nodes["vision"], 0) for run in vision_runs])
    vision["runs"] = len(vision_runs)
    if len(decoder_runs) < 2:
        raise Glm4vEdgeError("the reply ended at its first token: no decode step to profile")
    prefill = stage(events["decoder"], decoder_runs[0], nodes["decoder"], 0)
    decode = mean_stage([stage(events["decoder"], run, nodes["decoder"], prompt_tokens + step)
                         for step, run in enumerate(decoder_runs[1:])])
    embed_ms = sum(run["dur"] for run in runs_of(events["embed"])[:1]) / 1000  # the prompt's lookup
    graphs_ms = sum(run["dur"] for run in vision_runs) / 1000 + embed_ms + prefill["run_ms"]
    stages = {"vision": bounded(vision, variant.graph_bytes(variant.vision), peak),
              "prefill": bounded(prefill, variant.decoder_bytes, peak),
              "decode_step": bounded(decode, variant.decoder_bytes, peak)}
    recorded = {**plain(settings), "artifacts": pinned(settings.artifacts)}
    record = new_record(KIND, record_name(settings.name, KIND, settings.artifacts),
                        "the first answer by stage and operator type, beside this machine's compute and read bounds",
                        recorded)
    return {**record, "onnxruntime": ort.__version__, "peak": peak, "prompt_tokens": prompt_tokens,
            "image_tokens": image_tokens,
            "ttft_s": round(ttft_s, 3), "decode_ms_per_token": round(float(np.median(step_ms)), 2),
            "profiled_ttft_s": round(profiled_ttft_s, 3),
            "host_ms": round(profiled_ttft_s * 1000 - graphs_ms, 1), "embed_ms": round(embed_ms, 2),
            "decoder_bytes": variant.decoder_bytes, "vision_bytes": variant.graph_bytes(variant.vision),
            "stages": stages, "peak_rss_mib": peak_rss_mib()}


def markdown(record: dict, top: int = 4) -> str:
    rows = []
    for name, result in record["stages"].items():
        ops = ", ".join(f"{op} {ms:.1f}" for op, ms in list(result["by_op_ms"].items())[:top])
        gmacs = f"{result['macs'].get('int8', 0) / 1e9:.1f} / {result['macs'].get('float', 0) / 1e9:.1f}"
        kernels = f"{result['kernel_rates_ms']:.1f} ({result['times_kernel_rates']:.2f}x)" \
            if result.get("kernel_rates_ms") else "-"
        rows.append([name, f"{result['run_ms']:.1f}", gmacs, f"{result['compute_bound_ms']:.1f}",
                     f"{result['read_bound_ms']:.1f}", f"{result['times_bound']:.2f}x", kernels, ops])
    peak = record["peak"]
    gemm = ", ".join(f"{kernel} {rate}" for kernel, rate in peak["gemm_gmacs"].items())
    reads = ", ".join(f"{loop} {rate}" for loop, rate in peak["read_gbs"].items())
    lines = heading(record) + table(["stage", "ms (profiled)", "G multiply-adds int8 / float", "compute bound ms",
                                     "read bound ms", "x bound", "at its kernels' rates ms (x)",
                                     f"top {top} operators, ms"], rows)
    settings = record["settings"]
    lines += [
        "",
        f"onnx-{settings['dtype']}, one {settings['size']} px image ({record['image_tokens']} image tokens, "
        f"{record['prompt_tokens']} prompt tokens), {settings['threads']} threads, "
        f"onnxruntime {record['onnxruntime']}. "
        f"Unprofiled: time to first token {record['ttft_s']:.2f} s, decode {record['decode_ms_per_token']:.1f} "
        f"ms/token. Profiled: {record['profiled_ttft_s']:.2f} s, of which {record['host_ms'] / 1000:.2f} s outside "
        f"the graphs (processor, host).",
        "",
        f"Peaks measured here on {peak['threads']} threads: int8 {peak['int8_gmacs']} G multiply-adds/s "
        f"({peak['int8_kernel']}), fp32 {peak['fp32_gmacs']} (each kernel: {gemm}); read-only bandwidth "
        f"{peak['read_bandwidth_gbs']} GB/s ({peak['read_loop']}; each loop: {reads}), "
        f"copy {peak['copy_bandwidth_gbs']} GB/s (read + write).",
        "",
        "At its kernels' rates: each node's multiply-adds at the rate its own kernel ran the square GEMM "
        f"above, and the weights at the {DECODE_LOOP} read rate, the larger. Not a floor: what is left "
        "above it is graph, host and attention overhead; what lies between it and the bound is the kernels' own.",
    ]
    return "\n".join(lines) + "\n"
