"""The benchmark end to end on the embedded model (1 run per stage; no timing assertions),
a crashing variant, and the public multiple-choice adapter on small local datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from glm4v_edge.bench.public_set import predicted_letter, questions, score
from glm4v_edge.runtime.inputs import user_message
from glm4v_edge.runtime.variant import Sampling, collect
from glm4v_edge.tiny import task
from tests.conftest import run_cli

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    from glm4v_edge.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("bench") / "tiny"
    export_onnx(None, folder, ["fp32", "int8"])
    return folder


def bench(artifacts: Path, out: Path, *extra: str):
    return run_cli("bench", "--artifacts", str(artifacts), "--prompts", "quick", "--runs", "1",
                   "--task-questions", "5", "--out", str(out), *extra)


def test_bench_writes_json_markdown_and_plots(artifacts, tmp_path):
    result = bench(artifacts, tmp_path / "results")
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(files) == 5, files
    record = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert record["schema_version"] == 1 and record["baseline"] == "torch-fp32"
    assert list(record["summary"]) == ["torch-fp32", "onnx-fp32", "onnx-int8"]
    for name, row in record["summary"].items():
        assert row["status"] == "ok", (name, row)
        assert row["decode_ms"] > 0 and row["tokens_per_s"] > 0 and row["floor_ms_per_token"] > 0
        assert row["size_mb"] > 0 and row["peak_rss_mib"] > 0 and row["task_accuracy"] is not None
    assert record["summary"]["onnx-fp32"]["top1_agreement"] == 1.0  # same weights as the baseline
    assert record["summary"]["onnx-fp32"]["decode_speedup"] is not None
    assert record["machine"]["copy_bandwidth_gbs"] > 0 and record["machine"]["cpu"]
    latency = record["results"]["onnx-int8"]["latency"]
    assert set(latency) == {"vision", "prefill", "time_to_first_token", "decode"}
    markdown = next((tmp_path / "results").glob("*.md")).read_text()
    assert "| onnx-int8 |" in markdown and "Baseline: **torch-fp32**" in markdown
    for png in (tmp_path / "results").glob("*.png"):
        with Image.open(png) as image:
            assert image.size[0] > 100


def test_a_crashing_variant_is_reported_and_the_others_complete(artifacts, tmp_path):
    broken = tmp_path / "tiny"
    shutil.copytree(artifacts, broken)
    (broken / "onnx" / "decoder_model_merged_int8.onnx").write_bytes(b"\0" * 100)  # truncated graph
    result = bench(broken, tmp_path / "results", "--task-questions", "0")
    assert result.returncode == 0, result.stderr
    assert "onnx-int8: failed" in result.stderr
    record = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert record["summary"]["onnx-int8"]["status"] == "failed"
    assert "decoder_model_merged_int8.onnx" in record["summary"]["onnx-int8"]["error"]
    assert record["summary"]["onnx-fp32"]["status"] == "ok"


def test_unknown_variant_is_a_one_line_error(artifacts, tmp_path):
    result = bench(artifacts, tmp_path / "results", "--variants", "onnx-int3")
    assert result.returncode == 1 and "error: unknown variant(s): onnx-int3" in result.stderr


def color_rows(count: int) -> list[task.Sample]:
    samples, index = [], 0
    while len(samples) < count:
        sample = task.make_sample("heldout", index)
        index += 1
        if sample.qtype == "color":
            samples.append(sample)
    return samples


def options_for(sample: task.Sample) -> list[str]:
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
