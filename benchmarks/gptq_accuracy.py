"""GPTQ against round-to-nearest (RTN) on the embedded model, same bits and group size, one run.

    python benchmarks/gptq_accuracy.py        # quantizes into artifacts/tiny-gptq first if missing

Both checkpoints come from GPTQModel in the same GPTQ format (RTN: its weight-only lifecycle, no
calibration), so the only difference is the algorithm. Per variant: task accuracy on the 500
held-out questions (greedy, exact match), and fidelity to the fp32 source teacher-forced on its
own greedy replies to 100 held-out prompts (mean KL, top-1 agreement, greedy-match length).
Writes benchmarks/results/gptq-vs-rtn-tiny.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from glm4v_edge.files import atomic_write_text
from glm4v_edge.machine import describe_machine
from glm4v_edge.parity import prompt_parity, reference_run
from glm4v_edge.quant.gptq import quantize_gptq
from glm4v_edge.quant.settings import GptqSettings
from glm4v_edge.runtime import load_variant
from glm4v_edge.tiny import task
from glm4v_edge.tiny.eval import evaluate

SETTINGS = {
    "gptq-int4": GptqSettings(bits=4),
    "rtn-int4": GptqSettings(bits=4, method="rtn"),
    "gptq-int3": GptqSettings(bits=3),  # harsher: where the algorithms part ways
    "rtn-int3": GptqSettings(bits=3, method="rtn"),
}


def fidelity(runs, variant) -> dict:
    results = [prompt_parity(run, variant) for run in runs]
    return {
        "prompts": len(results),
        "mean_kl": float(np.mean([r.mean_kl for r in results])),
        "top1_agreement": float(np.mean([r.top1_agreement for r in results])),
        "mean_greedy_match": float(np.mean([r.greedy_match for r in results])),
        "identical_replies": sum(r.exact for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny-gptq"))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--fidelity-prompts", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gptq-vs-rtn-tiny.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name, settings in SETTINGS.items():
        if not (args.artifacts / name).exists():
            quantize_gptq(None, args.artifacts / name, settings, report=print)
    manifest = json.loads((args.artifacts / "manifest.json").read_text())

    source = load_variant("torch-fp32", device="cpu")
    prompts = [task.make_sample("heldout", 10_000 + i).messages() for i in range(args.fidelity_prompts)]
    runs = [reference_run(source, messages) for messages in prompts]
    baseline = evaluate(source, args.count)
    results = {"torch-fp32": {**baseline.to_dict(), "points_vs_source": 0.0}}
    print(f"torch-fp32: {baseline.accuracy():.1%}")
    for name in SETTINGS:
        variant = load_variant(name, artifacts=args.artifacts, device="cpu")
        started = time.perf_counter()
        report = evaluate(variant, args.count)
        entry = manifest["variants"][name]
        results[name] = {
            **report.to_dict(),
            "points_vs_source": round(100 * (report.accuracy() - baseline.accuracy()), 1),
            "fidelity": fidelity(runs, variant),
            "settings": {k: entry["settings"][k] for k in ("bits", "group_size", "desc_act", "sym", "method")},
            "calibration_samples": len(entry["calibration"]["samples"]),
            "decoder_bits_per_weight": entry["decoder_bits_per_weight"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"{name}: {report.accuracy():.1%}, KL {results[name]['fidelity']['mean_kl']:.2e}")
    record = {
        "benchmark": "benchmarks/gptq_accuracy.py",
        "model": "embedded tiny GLM-4.1V (glm4v_edge/tiny/checkpoint)",
        "heldout_questions": args.count,
        "fidelity_reference": "torch-fp32 greedy replies (<= 32 tokens), teacher-forced",
        "results": results,
        "machine": describe_machine(),
    }
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
