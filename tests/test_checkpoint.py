"""Loading: the embedded model goes through the same from_pretrained path as a hub id."""

import json

import pytest
import torch
from transformers import AutoProcessor, Glm4vForConditionalGeneration

from glm4v_edge import checkpoint
from glm4v_edge.errors import Glm4vEdgeError
from tests.conftest import assert_one_line_error, run_cli


def test_embedded_fixture_loads_with_plain_from_pretrained():
    folder = checkpoint.embedded_model_dir()
    model = Glm4vForConditionalGeneration.from_pretrained(folder, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == "Glm4vForConditionalGeneration"
    assert type(processor).__name__ == "Glm4vProcessor"
    assert model.config.model_type == "glm4v"


def test_fixture_is_small_and_safetensors_only():
    folder = checkpoint.embedded_model_dir()
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert total <= 10 * 1024 * 1024, total
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_default_dtype_and_device():
    assert checkpoint.default_dtype("cpu") == torch.float32
    assert checkpoint.default_dtype("cuda") == torch.bfloat16
    model = checkpoint.load_model(None, device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    model = checkpoint.load_model(None, dtype=torch.bfloat16, device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_special_token_ids_come_from_config_and_tokenizer(tiny_variant):
    tokens = tiny_variant.tokens
    tokenizer = tiny_variant.processor.tokenizer
    config = tiny_variant.model.config
    assert tokens.image == config.image_token_id == tokenizer.convert_tokens_to_ids("<|image|>")
    assert tokens.video_start == tokenizer.convert_tokens_to_ids("<|begin_of_video|>")
    assert tokens.think_open == tokenizer.convert_tokens_to_ids("<think>")
    ends = ("<|endoftext|>", "<|user|>", "<|observation|>")
    assert set(tokens.eos) == {tokenizer.convert_tokens_to_ids(t) for t in ends}
    # The tiny model's ids are its own, not the 9B's (151343 ...): nothing may assume them.
    assert tokens.image != 151343


def test_missing_folder(tmp_path):
    with pytest.raises(Glm4vEdgeError, match="model folder not found"):
        checkpoint.resolve_model(tmp_path / "nowhere")
    assert_one_line_error(run_cli("chat", "Hi", "--model", str(tmp_path / "nowhere")), "model folder not found")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    assert_one_line_error(run_cli("chat", "Hi", "--model", str(tmp_path)), "no config.json")


def test_folder_of_another_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    assert_one_line_error(run_cli("chat", "Hi", "--model", str(tmp_path)), "'llama' checkpoint", "glm4v")


def test_hub_id_unreachable_offline():
    result = run_cli("chat", "Hi", "--model", checkpoint.HUB_ID)
    assert_one_line_error(result, checkpoint.HUB_ID, "unreachable")


def test_hub_ids_and_paths_are_told_apart(tmp_path):
    assert checkpoint.resolve_model("zai-org/GLM-4.1V-9B-Thinking") == "zai-org/GLM-4.1V-9B-Thinking"
    assert checkpoint.resolve_model(None) == str(checkpoint.embedded_model_dir())
    with pytest.raises(Glm4vEdgeError):
        checkpoint.resolve_model("./relative/missing")
