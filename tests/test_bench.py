"""The benchmark end to end on the embedded model (1 run per stage; no timing assertions),
a crashing variant, and the public multiple-choice adapter on small local datasets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from glm4v_edge import shapes
from glm4v_edge.bench.public_set import predicted_letter, questions, score
from glm4v_edge.messages import user_message
from glm4v_edge.runtime.variant import Sampling, collect
from tests.conftest import assert_one_line_error, run_cli

datasets = pytest.importorskip("datasets")


def bench(artifacts: Path, *extra: str):
    return run_cli("bench", "--artifacts", str(artifacts), "--prompts", "quick", "--runs", "1",
                   "--task-questions", "3", *extra)


def test_bench_writes_json_markdown_and_plots_and_survives_a_crashing_variant(bench_run):
    """One run (tests/bench_run.py, in the background): the baseline, a healthy variant taken
    from another build (NAME@FOLDER), and a variant whose graph is truncated (its own process
    dies or fails; the report says so and the others complete)."""
    folder, output = bench_run
    assert "onnx-int8: failed" in output
    results = folder / "tiny" / "bench"  # the default: inside the artifacts folder, never committed files
    files = sorted(p.name for p in results.iterdir())
    assert len(files) == 5, files
    record = json.loads(next(results.glob("*.json")).read_text())
    assert record["schema_version"] == 1 and record["baseline"] == "torch-fp32"
    assert list(record["summary"]) == ["torch-fp32", "onnx-fp32@healthy", "onnx-int8"]
    assert record["results"]["onnx-fp32@healthy"]["name"] == "onnx-fp32@healthy"
    assert record["summary"]["onnx-int8"]["status"] == "failed"
    assert "decoder_model_merged_int8.onnx" in record["summary"]["onnx-int8"]["error"]
    for name in ("torch-fp32", "onnx-fp32@healthy"):
        row = record["summary"][name]
        assert row["status"] == "ok", (name, row)
        assert row["decode_ms"] > 0 and row["tokens_per_s"] > 0 and row["floor_ms_per_token"] > 0
        assert row["read_floor_ms_per_token"] > 0 and row["decode_vs_read_floor"] > 0
        assert row["size_mb"] > 0 and row["peak_rss_mib"] > 0 and row["task_accuracy"] is not None
    fp32 = record["summary"]["onnx-fp32@healthy"]
    assert fp32["top1_agreement"] == 1.0 and fp32["identical_replies"] == "5/5"  # same weights as the baseline
    assert fp32["task_replies_identical"] == 3 and fp32["decode_speedup"] is not None
    assert record["machine"]["copy_bandwidth_gbs"] > 0 and record["machine"]["copy_bandwidth_threads"] >= 1
    reads = record["machine"]["read_bandwidths_gbs"]  # the read floor's bandwidth is the fastest loop's
    assert record["machine"]["read_bandwidth_gbs"] == max(reads.values()) == reads[record["machine"]["read_loop"]]
    # measured before and after the variants, each loop's faster sample kept (a floor no variant beats)
    before, after = record["machine"]["bandwidth_samples"]
    assert reads == {name: max(before["read_gbs"][name], after["read_gbs"][name]) for name in reads}
    assert record["machine"]["copy_bandwidth_gbs"] == max(before["copy_gbs"], after["copy_gbs"])
    # each variant's read floor: its own loops, measured in its process in turns with its decode
    # runs (before each of the one warm-up-free run and after it), the fastest loop's bandwidth
    in_turns = record["results"]["onnx-fp32@healthy"]["latency"]["decode"]["reads_in_turns"]
    assert in_turns["samples"] == 2 and in_turns["read_bandwidth_gbs"] == max(in_turns["read_gbs"].values())
    assert fp32["read_floor_gbs"] == in_turns["read_bandwidth_gbs"]
    assert fp32["read_floor_measured"] == "in turns with its decode" and fp32["decode_vs_run_read_floor"] > 0
    latency = record["results"]["onnx-fp32@healthy"]["latency"]
    assert set(latency) == {"vision", "prefill", "time_to_first_token", "follow_up", "decode"}
    # The follow-up turn started from the first turn's cache: at least the whole first prompt but its last token.
    prompt = latency["time_to_first_token"]["prompt_tokens"]
    assert all(reused >= prompt - 1 for reused in latency["follow_up"]["cached_tokens"])
    assert fp32["follow_up_ms"] > 0 and fp32["follow_up_cached_tokens"] >= prompt - 1
    markdown = next(results.glob("*.md")).read_text()
    assert "| onnx-fp32@healthy |" in markdown and "| onnx-int8 | failed" in markdown
    assert "Baseline: **torch-fp32**" in markdown
    header, separator = markdown.split("\n")[4:6]
    assert header.count("|") == separator.count("|")
    for png in results.glob("*.png"):
        with Image.open(png) as image:
            assert image.size[0] > 100


def test_accuracy_only_job_has_no_latency_and_reports(artifacts, tmp_path):
    """``--prompts none``: measured in this process here (the isolation is tested above)."""
    from glm4v_edge.bench.report import build_record, markdown
    from glm4v_edge.bench.runner import Job, measure

    job = Job(variant="onnx-q4", model=None, artifacts=str(artifacts), device="cpu", threads=None,
              prompt_set="none", task_questions=2)
    baseline = measure(replace(job, variant="torch-fp32"))
    result = measure(replace(job, references=baseline.pop("references")))
    assert result["latency"] is None and result["task"]["samples"] == 2
    assert result["task"]["replies_identical_to_baseline"] <= 2 and result["fidelity"]["prompts"] == 4
    record = build_record("accuracy-only", {"runs": 1}, {"cpu": "test", "copy_bandwidth_threads": 1}, 10.0,
                          {"torch-fp32": baseline, "onnx-q4": result}, "torch-fp32")
    row = record["summary"]["onnx-q4"]
    assert row["decode_ms"] is None and row["task_accuracy"] is not None and row["mean_kl"] >= 0
    assert "| onnx-q4 |" in markdown(record)


def test_unknown_and_unscorable_variants_are_refused_before_starting(artifacts, tmp_path):
    assert_one_line_error(bench(artifacts, "--variants", "onnx-int3", "--out", str(tmp_path)),
                          "unknown variant(s): onnx-int3")
    assert_one_line_error(bench(artifacts, "--variants", "remote", "--out", str(tmp_path)),
                          "remote cannot be benchmarked")
    assert_one_line_error(bench(artifacts, "--prompts", "long", "--out", str(tmp_path)), "unknown prompt set")
    assert_one_line_error(bench(artifacts, "--variants", "rtn-int4", "--out", str(tmp_path)), "holds no rtn-int4")
    assert_one_line_error(bench(artifacts, "--variants", f"onnx-q4@{tmp_path / 'none'}", "--out", str(tmp_path)),
                          "artifacts folder not found")
    assert_one_line_error(bench(artifacts, "--variants", f"onnx-q4@{artifacts},onnx-q4@{artifacts}", "--out",
                                str(tmp_path)), "names a row twice")
    assert not list(tmp_path.iterdir())  # refused before measuring anything


def test_onnx_on_cuda_without_onnxruntime_gpu_is_a_not_run_row(tmp_path):
    """The GPU script's plan on a machine whose onnxruntime lacks the CUDA provider (this one):
    the ONNX rows are planned as "not run" with the reason, the torch rows run."""
    import onnxruntime

    from glm4v_edge.bench.benchmark import plan_bench
    from glm4v_edge.bench.settings import BenchSettings

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    plan = plan_bench(BenchSettings(tmp_path, variants="torch-bf16,onnx-q4f16", baseline="torch-fp16", device="cuda"))
    assert [choice.label for choice in plan.variants] == ["torch-bf16"]
    assert plan.not_run == {"onnx-q4f16": "onnxruntime-gpu not installed (this onnxruntime has no CUDA execution "
                                          "provider)"}


def test_torch_variants_need_no_build_in_the_artifacts_folder(tmp_path):
    """The GPU script benchmarks the torch rows even when nothing could be built there."""
    from glm4v_edge.runtime.registry import load_from

    assert load_from("torch-fp32", None, tmp_path / "nothing-built").name == "torch-fp32"
    assert_one_line_error(bench(tmp_path / "nothing-built", "--variants", "onnx-q4", "--out", str(tmp_path)),
                          "artifacts folder not found")
    assert not list(tmp_path.glob("*.json"))  # refused before measuring anything


def color_rows(count: int) -> list[shapes.Sample]:
    samples, index = [], 0
    while len(samples) < count:
        sample = shapes.make_sample("heldout", index)
        index += 1
        if sample.qtype == "color":
            samples.append(sample)
    return samples


def options_for(sample: shapes.Sample) -> list[str]:
    others = [c for c in ("red", "green", "blue", "yellow", "purple") if c != sample.answer][:3]
    return others[:1] + [sample.answer] + others[1:]  # the answer is always B


def test_public_set_formats_are_read(tmp_path):
    samples = color_rows(3)
    image = datasets.Image()
    # MathVista: a choices list, text answers, a free-form row that is skipped
    datasets.Dataset.from_dict({
        "decoded_image": [s.images[0] for s in samples], "question": [s.question for s in samples],
        "choices": [options_for(s) for s in samples[:2]] + [[]], "answer": [s.answer for s in samples[:2]] + ["7"],
        "question_type": ["multi_choice", "multi_choice", "free_form"],
    }, features=datasets.Features({"decoded_image": image, "question": datasets.Value("string"),
                                   "choices": datasets.Sequence(datasets.Value("string")),
                                   "answer": datasets.Value("string"), "question_type": datasets.Value("string")}),
    ).to_parquet(str(tmp_path / "mathvista.parquet"))
    read = questions(tmp_path / "mathvista.parquet")
    assert [q.answer for q in read] == ["B", "B"] and "B. " + samples[0].answer in read[0].prompt
    # MMBench: letter columns, a hint, letter answers, categories
    datasets.Dataset.from_dict({
        "image": [s.images[0] for s in samples], "question": [s.question for s in samples],
        "hint": ["look closely", None, None], "A": ["red"] * 3, "B": ["blue"] * 3, "C": ["green"] * 3,
        "answer": ["A", "C", "B"], "category": ["color", "color", "other"],
    }, features=datasets.Features({"image": image, "question": datasets.Value("string"),
                                   "hint": datasets.Value("string"), "A": datasets.Value("string"),
                                   "B": datasets.Value("string"), "C": datasets.Value("string"),
                                   "answer": datasets.Value("string"), "category": datasets.Value("string")}),
    ).save_to_disk(str(tmp_path / "mmbench"))
    read = questions(tmp_path / "mmbench")
    assert [q.answer for q in read] == ["A", "C", "B"] and read[0].prompt.startswith("Hint: look closely")
    assert read[0].options == ["red", "blue", "green"] and read[2].category == "other"


def test_predicted_letter():
    options = ["red", "purple", "green"]
    assert predicted_letter("B", options) == "B"
    assert predicted_letter("(C) green", options) == "C"
    assert predicted_letter("purple", options) == "B"  # the option's text, as VLMEvalKit maps it
    assert predicted_letter("I think the answer is A", []) == "A"  # MMStar: options inline
    assert predicted_letter("no idea", options) is None


def test_public_set_score_matches_the_replies(tiny_variant, tmp_path):
    samples = color_rows(4)
    datasets.Dataset.from_dict({
        "image": [s.images[0] for s in samples], "question": [s.question for s in samples],
        "options": [options_for(s) for s in samples], "answer": ["B"] * 4,
    }, features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                   "options": datasets.Sequence(datasets.Value("string")),
                                   "answer": datasets.Value("string")})).save_to_disk(str(tmp_path / "set"))
    result = score(tiny_variant, tmp_path / "set", limit=None, max_new_tokens=64)
    expected = 0
    for question in questions(tmp_path / "set"):  # the same prompts, scored by hand
        reply = collect(tiny_variant.generate([user_message(question.prompt, images=[question.image])],
                                              max_new_tokens=64, sampling=Sampling.greedy())).reply.final_answer
        expected += predicted_letter(reply, question.options) == "B"
    assert result["questions"] == 4 and result["accuracy"] == expected / 4
    assert result["per_category"] == {"all": {"correct": expected, "total": 4}}
