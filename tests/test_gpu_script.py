"""The GPU comparison script (benchmarks/gpu/run.sh) end to end on CPU with the embedded model:
the same steps a GPU machine runs (checkpoint, ONNX where it can run, int4 by GPTQModel, every
variant benchmarked against torch fp16 in its own process), only the device and the model differ."""

import json

import pytest


@pytest.mark.slow  # ~2.3 min of CPU in the background: the script is for GPU machines (CI runs it)
def test_every_variant_is_measured_against_fp16(gpu_script_run):
    record = json.loads(next((gpu_script_run / "results").glob("gpu-embedded-*.json")).read_text())
    assert record["baseline"] == "torch-fp16" and record["settings"]["prompts"] == "gpu"
    summary, results = record["summary"], record["results"]
    assert list(summary) == ["torch-fp16", "torch-bf16", "torch-fp16-static", "torch-fp16-compiled", "rtn-int4",
                             "onnx-fp16", "onnx-q4f16"]
    for name, row in summary.items():
        assert row["status"] == "ok", (name, row)
        assert row["decode_ms"] > 0 and row["ttft_ms"] > 0 and row["prefill:512_ms"] > 0, name
        assert row["vision:448px_ms"] > 0 and row["vision:896px_ms"] > 0, name
    assert results["torch-fp16-static"]["details"]["cache"] == "static"
    assert results["torch-fp16-compiled"]["details"]["compiled"] is False  # transformers compiles on CUDA only
    assert results["rtn-int4"]["details"]["linear_kernel"] != "Linear"  # a GPTQModel kernel, named in the report
    assert results["onnx-q4f16"]["details"]["providers"] == ["CPUExecutionProvider"]
    for suffix in (".md", "-latency.png", "-decode-vs-memory.png", "-accuracy-vs-size.png"):
        assert list((gpu_script_run / "results").glob(f"gpu-embedded-*{suffix}")), suffix
