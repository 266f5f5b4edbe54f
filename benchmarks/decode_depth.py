"""Decode ms/token after long contexts: the ONNX decoder with its cache joined per step and
written in place, and llama.cpp on a GGUF of the same decoder, in one run.

    python benchmarks/decode_depth.py OUT.json --artifacts FOLDER --dtype q4 \
        --depths 512,2048,8192 --peer model-q4_0.gguf --threads 2

A thinking model's reply runs to thousands of tokens, so decode speed deep into the context
matters as much as at its start. The ONNX rows time the exported decoder alone after ``depth``
cached positions (random embeddings and cache: the work does not depend on the values),
``--steps`` steps after warm-up, median over steps, then over ``--rounds``: "cache per step"
feeds the cache as an input and gets a longer one back each step (what exports without
``kv_cache: shared`` do); "cache in place" binds one preallocated cache as both past and
present, as generate() does now. llama-bench decodes ``--steps`` tokens after a context of
each depth (``tg@d``, its mean). Depths and rounds are interleaved, every row of a depth
measured back to back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def step_ms(variant, depth: int, steps: int, in_place: bool) -> float:
    """Median ms of one decode step after ``depth`` cached positions."""
    rng = np.random.default_rng(depth)
    hidden = variant.config.text_config.hidden_size
    dtype = variant.decoder.float_type(variant.past_names[0])
    room = depth + (steps + 3 if in_place else 0)
    cache = [variant.decoder.value(rng.standard_normal((1, variant.kv_heads, room, variant.head_dim)).astype(dtype))
             for _ in variant.past_names]
    embeds = rng.standard_normal((1, 1, hidden)).astype(np.float32)
    times = []
    for step in range(steps + 3):
        grown = step if in_place else 0  # in place the context really grows; per step it is re-fed
        mask = np.ones((1, depth + grown + 1), np.int64)
        positions = np.full((3, 1, 1), depth + grown, np.int64)
        start = time.perf_counter()
        variant.decode(embeds, mask, positions, cache, keep=1, in_place=in_place)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times[3:])) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--dtype", default="q4")
    parser.add_argument("--depths", default="512,2048,8192")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions (medians reported)")
    parser.add_argument("--peer", type=Path, help="a GGUF of the same decoder, for llama-bench")
    args = parser.parse_args()

    from glm4v_edge.bench.peer import check_peer, run_llama_bench
    from glm4v_edge.errors import Glm4vEdgeError
    from glm4v_edge.files import atomic_write_text
    from glm4v_edge.machine import describe_machine
    from glm4v_edge.runtime.onnx_variant import OnnxVariant

    try:
        binary = check_peer(args.peer) if args.peer else None
    except Glm4vEdgeError as error:
        raise SystemExit(f"error: {error}") from None
    depths = [int(depth) for depth in args.depths.split(",")]
    variant = OnnxVariant(args.artifacts, dtype=args.dtype, device="cpu", threads=args.threads)

    def llama_cpp_ms(depth: int) -> float:
        records, peak = run_llama_bench(binary, ["-m", str(args.peer), "-t", str(args.threads), "-r", "1",
                                                 "-p", "0", "-n", str(args.steps), "-d", str(depth)])
        peer.update(commit=records[0]["build_commit"], peak_rss_mib=max(peak, peer.get("peak_rss_mib", 0)))
        return round(1000 / records[0]["avg_ts"], 2)

    # Interleaved, depth by depth and round by round: a shared machine's drift hits every row alike.
    measures = {"cache_per_step_ms": lambda depth: step_ms(variant, depth, args.steps, in_place=False),
                "cache_in_place_ms": lambda depth: step_ms(variant, depth, args.steps, in_place=True)}
    if binary:
        measures["llama_cpp_ms"] = llama_cpp_ms
    peer = {"gguf": args.peer.name} if binary else {}
    samples = {depth: {name: [] for name in measures} for depth in depths}
    for _ in range(args.rounds):
        for depth in depths:
            for name, measure in measures.items():
                samples[depth][name].append(measure(depth))
            print(depth, {name: values[-1] for name, values in samples[depth].items()}, flush=True)
    rows = {}
    for depth, row in samples.items():
        medians = {name: round(float(np.median(values)), 2) for name, values in row.items()}
        medians["in_place_speedup"] = round(medians["cache_per_step_ms"] / medians["cache_in_place_ms"], 2)
        if binary:
            medians["in_place_vs_llama_cpp"] = round(medians["llama_cpp_ms"] / medians["cache_in_place_ms"], 2)
        rows[str(depth)] = {**medians, "rounds": row}
    record = {"what": "decode ms/token after long contexts: the ONNX decoder's cache per step vs in place, "
                      "and llama.cpp, in one run", "artifacts": str(args.artifacts), "dtype": args.dtype,
              "threads": args.threads, "steps": args.steps, "rounds": args.rounds, "peer": peer or None,
              "machine": describe_machine(), "date": time.strftime("%Y-%m-%d"), "depths": rows}
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(json.dumps({depth: {k: v for k, v in row.items() if k != "rounds"} for depth, row in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
