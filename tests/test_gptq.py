"""GPTQ int4 of the embedded model end to end: quantize, reload with transformers, answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from glm4v_edge import shapes
from glm4v_edge.checkpoint import embedded_model_dir
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.messages import user_message
from glm4v_edge.quant.calibration import MIN_SAMPLES, calibration_samples, dataset_samples, folder_samples
from glm4v_edge.quant.settings import GptqSettings
from glm4v_edge.quant.vllm import vllm_problems
from glm4v_edge.runtime.registry import load_variant
from glm4v_edge.runtime.variant import Sampling, collect
from tests.conftest import GPTQ_CALIBRATION, assert_one_line_error, run_cli

pytest.importorskip("gptqmodel")

DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def gptq_variant(artifacts):
    return load_variant("gptq-int4", artifacts=artifacts, device="cpu")


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def test_checkpoint_is_a_plain_hf_folder_with_a_vllm_valid_config(artifacts):
    folder = artifacts / "gptq-int4"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "processor_config.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["bits"], config["group_size"], config["sym"]) == ("gptq", 4, 128, True)
    assert vllm_problems(config) == []
    weights = tensors(folder)
    layers = json.loads((folder / "config.json").read_text())["text_config"]["num_hidden_layers"]
    for layer in range(layers):
        for linear in DECODER_LINEARS:  # GLM's own names: q/k/v apart, gate_up fused
            prefix = f"model.language_model.layers.{layer}.{linear}"
            for part in ("qweight", "qzeros", "scales", "g_idx"):
                assert f"{prefix}.{part}" in weights, f"{prefix}.{part}"
            assert f"{prefix}.weight" not in weights
    assert not any(".mlp.gate_proj." in name and "language_model" in name for name in weights)


def test_only_the_language_model_linears_change(artifacts):
    source = tensors(embedded_model_dir())
    quantized = tensors(artifacts / "gptq-int4")
    kept = [name for name in source if not any(f".{linear}." in name for linear in DECODER_LINEARS)
            or "visual" in name]
    assert any(name.startswith("model.visual.") for name in kept)
    for name in kept:  # vision tower, merger, embeddings, lm_head, norms: byte-identical
        assert quantized[name].dtype == source[name].dtype, name
        assert torch.equal(quantized[name], source[name]), name


def test_manifest_entry_lists_files_settings_calibration_and_parity(artifacts):
    manifest = json.loads((artifacts / "manifest.json").read_text())
    entry = manifest["variants"]["gptq-int4"]
    assert entry["folder"] == "gptq-int4"
    assert entry["settings"]["bits"] == 4 and entry["settings"]["group_size"] == 128
    assert len(entry["calibration"]["samples"]) == GPTQ_CALIBRATION
    assert sum(s["media"] > 0 for s in entry["calibration"]["samples"]) > GPTQ_CALIBRATION // 2  # mostly image+text
    assert 4.0 < entry["decoder_bits_per_weight"] < 4.6
    assert set(entry["parity"]["results"]) == {"text", "image", "two_images", "video"}
    for result in entry["parity"]["results"].values():
        assert result["top1_agreement"] >= 0.9 and result["mean_kl"] < 0.05
    assert "gptq-int4/model.safetensors" in manifest["files"]
    assert entry["tools"]["gptqmodel"] != "not installed"


def test_reloads_with_from_pretrained_and_answers_held_out_questions(gptq_variant):
    model = gptq_variant.model
    assert type(model).__name__ == "Glm4vForConditionalGeneration"
    assert type(model.model.language_model.layers[0].mlp.gate_up_proj).__name__ != "Linear"  # a GPTQ kernel
    correct = 0
    for index in range(20):
        sample = shapes.make_sample("heldout", index)
        result = collect(gptq_variant.generate(sample.messages(), max_new_tokens=64, sampling=Sampling.greedy()))
        correct += result.reply.final_answer == sample.answer
    assert correct >= 18, correct


def test_chat_cli_with_the_gptq_variant(artifacts):
    result = run_cli("chat", "What color is the square?", "--image", "examples/color-square.png",
                     "--variant", "gptq-int4", "--artifacts", str(artifacts), "--hide-thinking")
    assert result.returncode == 0, result.stderr
    assert "purple" in result.stdout
    assert "GPT-QModel" not in result.stdout + result.stderr  # its banner stays out of the CLI


def test_damaged_checkpoint_is_refused(artifacts, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(artifacts, copy)
    with open(copy / "gptq-int4" / "model.safetensors", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\0" * 8)
    with pytest.raises(Glm4vEdgeError, match="sha256"):
        load_variant("gptq-int4", artifacts=copy, device="cpu")
    with pytest.raises(Glm4vEdgeError, match="no gptq-int8"):
        load_variant("gptq-int8", artifacts=copy, device="cpu")


@pytest.mark.parametrize("args, fragment", [
    (["--bits", "5"], "--bits 5"),
    (["--group-size", "96"], "does not divide"),
    (["--method", "awq"], "unknown method"),
])
def test_bad_settings_are_one_line_errors(tmp_path, args, fragment):
    assert_one_line_error(run_cli("quantize", "gptq", "--out", str(tmp_path / "q"), *args), fragment)
    assert not (tmp_path / "q").exists()


def test_existing_output_is_refused(artifacts):
    result = run_cli("quantize", "gptq", "--out", str(artifacts / "gptq-int4"))
    assert_one_line_error(result, "not empty", "--overwrite")


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from glm4v_edge.quant import gptq

    def interrupted(source, settings, dtype, device, batches, staging, layers, progress):
        (staging / "model.safetensors").write_bytes(b"half a checkpoint")  # Ctrl-C while GPTQModel writes
        raise KeyboardInterrupt

    monkeypatch.setattr(gptq, "run_gptqmodel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gptq.quantize_gptq(None, tmp_path / "tiny" / "rtn-int4", GptqSettings(method="rtn"))
    assert list((tmp_path / "tiny").iterdir()) == []  # no checkpoint, no staging folder, no manifest


def write_images(folder: Path, good: int, corrupt: int) -> None:
    folder.mkdir()
    for index in range(good):
        shapes.make_sample("train", index * 5).images[0].save(folder / f"good-{index:02d}.png")
    (folder / "good-00.txt").write_text("How many shapes are there?")
    for index in range(corrupt):
        (folder / f"bad-{index}.jpg").write_bytes(b"not a jpeg" * index)  # one of them empty


def test_calibration_folder_skips_unreadable_images_with_a_warning(tmp_path):
    write_images(tmp_path / "calib", good=MIN_SAMPLES + 2, corrupt=3)
    (tmp_path / "calib" / "prompts.txt").write_text("Explain GPTQ in one sentence.\n\n")
    warnings: list[str] = []
    samples = folder_samples(tmp_path / "calib", 100, warnings.append)
    assert len(samples) == MIN_SAMPLES + 2 + 1
    assert samples[0].messages[0]["content"][-1]["text"] == "How many shapes are there?"
    assert samples[-1].messages == [user_message("Explain GPTQ in one sentence.")]
    assert sum("skipped:" in w for w in warnings) == 3 and "3 of" in warnings[-1]


def test_too_few_readable_images_is_an_error(tmp_path):
    write_images(tmp_path / "calib", good=MIN_SAMPLES - 3, corrupt=4)
    with pytest.raises(Glm4vEdgeError, match=f"only {MIN_SAMPLES - 3} usable calibration samples"):
        calibration_samples(tmp_path / "calib", 100, embedded=False, warn=lambda message: None)


def test_cli_reports_skipped_images_and_fails_below_the_minimum(tmp_path):
    write_images(tmp_path / "calib", good=2, corrupt=2)
    result = run_cli("quantize", "gptq", "--out", str(tmp_path / "q"), "--calibration-data", str(tmp_path / "calib"))
    assert result.returncode == 1
    assert "warning: 2 of 4 images" in result.stderr
    assert f"error: only 2 usable calibration samples; GPTQ needs at least {MIN_SAMPLES}" in result.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_hf_datasets_image_text_format(tmp_path, form):
    import datasets

    rows = {"image": [], "question": []}
    for index in range(MIN_SAMPLES + 1):
        rows["image"].append(shapes.make_sample("train", index * 5).images[0])
        rows["question"].append(f"question {index}")
    data = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string")}))
    path = tmp_path / "data"
    if form == "save_to_disk":
        data.save_to_disk(str(path))
    else:
        path.mkdir()
        data.to_parquet(str(path / "train.parquet"))
    samples = calibration_samples(path, 100, embedded=False, warn=lambda message: None)
    assert len(samples) == MIN_SAMPLES + 1
    content = samples[3].messages[0]["content"]
    assert isinstance(content[0]["image"], Image.Image) and content[1]["text"] == "question 3"


def test_dataset_without_an_image_column_is_an_error(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"question": ["a", "b"]}).save_to_disk(str(tmp_path / "text-only"))
    with pytest.raises(Glm4vEdgeError, match="needs an image column"):
        dataset_samples(tmp_path / "text-only", 10, warn=lambda message: None)
