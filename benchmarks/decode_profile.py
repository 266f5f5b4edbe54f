"""Where one decode step of an exported decoder goes, by operator type (onnxruntime's profiler).

    python benchmarks/decode_profile.py OUT.json LABEL=FOLDER [LABEL=FOLDER ...] --dtype q4 --past 128

Each decoder graph runs one new token after ``--past`` cached positions (random embeddings and
cache: the work does not depend on values), ``--steps`` times after warm-up, on ``--threads``
intra-op threads. Recorded per graph: the median and p90 step time without profiling, then the
profiler's kernel time per operator type per step (profiling adds overhead: read the shares).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def decode_inputs(session: ort.InferenceSession, past: int) -> dict[str, np.ndarray]:
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    rng = np.random.default_rng(0)
    inputs = {}
    for value in session.get_inputs():
        if value.name == "inputs_embeds":
            inputs[value.name] = rng.standard_normal((1, 1, value.shape[-1])).astype(types[value.type])
        elif value.name == "attention_mask":
            inputs[value.name] = np.ones((1, past + 1), np.int64)
        elif value.name == "position_ids":
            inputs[value.name] = np.full((3, 1, 1), past, np.int64)
        elif value.name == "num_logits_to_keep":
            inputs[value.name] = np.array(1, np.int64)
        else:  # past_key_values.N.key / value: (batch, kv_heads, past, head_dim)
            inputs[value.name] = rng.standard_normal((1, value.shape[1], past, value.shape[3])).astype(
                types[value.type])
    return inputs


def step_times(session: ort.InferenceSession, inputs: dict, steps: int) -> list[float]:
    for _ in range(3):
        session.run(None, inputs)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        session.run(None, inputs)
        times.append((time.perf_counter() - start) * 1000)
    return times


def profile(path: Path, past: int, steps: int, threads: int) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = decode_inputs(session, past)
    times = step_times(session, inputs, steps)
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        profiled = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        step_times(profiled, inputs, steps)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    by_op, nodes = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    runs = steps + 3
    total = sum(by_op.values())
    return {
        "graph": str(path), "past": past, "threads": threads, "steps": steps,
        "step_ms": {"median": round(float(np.median(times)), 2), "p90": round(float(np.percentile(times, 90)), 2)},
        "profiled_kernel_ms_per_step": round(total / runs / 1000, 2),
        "by_op": {op: {"ms_per_step": round(us / runs / 1000, 3), "nodes": nodes[op] // runs,
                       "share": round(us / total, 3)} for op, us in by_op.most_common()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("folders", nargs="+", help="LABEL=FOLDER (an `export onnx` folder)")
    parser.add_argument("--dtype", default="q4")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from glm4v_edge.files import atomic_write_text
    from glm4v_edge.machine import describe_machine
    from glm4v_edge.names import graph_file

    results = {}
    for entry in args.folders:
        label, folder = entry.split("=", 1)
        results[label] = profile(Path(folder) / graph_file("decoder_model_merged", args.dtype), args.past,
                                 args.steps, args.threads)
        top = list(results[label]["by_op"].items())[:4]
        print(label, results[label]["step_ms"], [(op, v["ms_per_step"]) for op, v in top], flush=True)
    record = {"what": "one decode step by operator type (onnxruntime profiler)", "machine": describe_machine(),
              "onnxruntime": ort.__version__, "date": time.strftime("%Y-%m-%d"), "results": results}
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
