"""Task accuracy of every ONNX precision of the embedded model beside torch's, in one run.

    python benchmarks/onnx_accuracy.py            # exports artifacts/tiny-onnx first if missing

Same 500 held-out questions, greedy, exact match on the parsed answer; also how many replies
are token-for-token identical to torch's. Writes benchmarks/results/onnx-accuracy-tiny.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from glm4v_edge.export.onnx_export import export_onnx
from glm4v_edge.files import atomic_write_text
from glm4v_edge.machine import describe_machine
from glm4v_edge.manifest import sha256
from glm4v_edge.runtime import load_variant
from glm4v_edge.tiny.eval import evaluate

DTYPES = ["fp32", "fp16", "q4", "q4f16", "int8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny-onnx"))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx-accuracy-tiny.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.artifacts.exists():
        export_onnx(None, args.artifacts, DTYPES, report=print)

    reports, seconds = {}, {}
    variants = [("torch-fp32", {}), *((f"onnx-{d}", {"artifacts": args.artifacts, "threads": args.threads})
                                      for d in DTYPES)]
    for name, options in variants:
        started = time.perf_counter()
        reports[name] = evaluate(load_variant(name, device="cpu", **options), args.count)
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"{name:>11}: {reports[name].accuracy():.1%}  ({seconds[name]} s)")

    baseline = reports["torch-fp32"]
    results = {}
    for name, report in reports.items():
        same = sum(a.text == b.text for a, b in zip(report.outcomes, baseline.outcomes))
        results[name] = {
            **report.to_dict(),
            "points_vs_torch": round(100 * (report.accuracy() - baseline.accuracy()), 1),
            "replies_identical_to_torch": same,
            "seconds": seconds[name],
        }
    record = {
        "benchmark": "benchmarks/onnx_accuracy.py",
        "artifacts_manifest_sha256": sha256(args.artifacts / "manifest.json"),
        "count": args.count,
        "results": results,
        "machine": describe_machine(),
    }
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
