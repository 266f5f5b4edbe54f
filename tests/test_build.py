"""Building checkpoints: training steps, atomic writes, random larger shapes."""

import json

import pytest
import torch
from transformers import AutoConfig, Glm4vForConditionalGeneration

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.files import atomic_directory
from glm4v_edge.runtime.registry import load_variant
from glm4v_edge.runtime.variant import Sampling, collect
from glm4v_edge.tiny import build, train
from glm4v_edge.tiny.random_checkpoint import write_random_checkpoint


@pytest.mark.slow  # ~18 s of training steps (CI runs it)
def test_a_few_training_steps_learn_and_save(tmp_path):
    losses = []
    settings = train.TrainSettings(steps=6, batch_size=2, warmup_steps=2)
    result = train.train(settings, on_step=lambda s: losses.append(s.loss), probe_every=3, probe_samples=2)
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert [p.step for p in result.probes] == [3, 6]
    out = train.save_trained(result, tmp_path / "ckpt", overwrite=False)
    record = json.loads((out / "training.json").read_text())
    assert record["settings"]["steps"] == 6 and record["machine"]["cpu_cores"] >= 1
    variant = load_variant("torch-fp32", out)
    result = collect(variant.generate([{"role": "user", "content": "Hi"}], max_new_tokens=5,
                                      sampling=Sampling.greedy()))
    assert len(result.token_ids) <= 5


def test_atomic_directory_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_non_empty_and_replaces_with_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Glm4vEdgeError, match="not empty"), atomic_directory(target):
        pass
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_mrope_sections_fit_the_head_size():
    for shape in build.PRESETS.values():
        head_dim = shape.text_hidden // shape.text_heads
        assert sum(shape.mrope_section) == head_dim // 4  # partial rotary 0.5, pairs
    assert build.PRESETS["9b"].mrope_section == [8, 12, 12]  # the real model's


def test_9b_preset_is_the_real_shape(tmp_path):
    write_random_checkpoint("9b", tmp_path / "9b", config_only=True)
    config = AutoConfig.from_pretrained(tmp_path / "9b")
    with torch.device("meta"):
        model = Glm4vForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    assert 10.2e9 < params < 10.4e9  # GLM-4.1V-9B-Thinking: about 10.3 B
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (4096, 40, 32, 2, 13696, 151552)


def test_random_weights_in_shards_load_back(tmp_path, monkeypatch):
    # Shards of 1 MB force several files and an index, as the 9B shape needs.
    original = build.write_random_weights
    monkeypatch.setattr(build, "write_random_weights",
                        lambda config, out, dtype: original(config, out, dtype, shard_bytes=1 << 20))
    out = write_random_checkpoint("tiny", tmp_path / "random-tiny", dtype="fp32")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model = Glm4vForConditionalGeneration.from_pretrained(out)
    assert model.model.language_model.norm.weight.eq(1).all()
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_medium_random_checkpoint_with_weights_runs(tmp_path):
    out = write_random_checkpoint("medium", tmp_path / "medium", dtype="bf16")
    variant = load_variant("torch-fp32", out)
    params = sum(p.numel() for p in variant.model.parameters())
    assert 1.3e9 < params < 1.6e9
    result = collect(variant.generate([{"role": "user", "content": "Hi"}], max_new_tokens=3,
                                      sampling=Sampling.greedy()))
    assert len(result.token_ids) <= 3


def test_9b_shallow_preset_has_every_9b_width_and_two_layers(tmp_path):
    write_random_checkpoint("9b-shallow", tmp_path / "shallow", config_only=True)
    write_random_checkpoint("9b", tmp_path / "9b", config_only=True)
    shallow, full = (AutoConfig.from_pretrained(tmp_path / name) for name in ("shallow", "9b"))
    assert shallow.text_config.num_hidden_layers == 2
    for part in ("text_config", "vision_config"):
        ours, theirs = getattr(shallow, part).to_dict(), getattr(full, part).to_dict()
        assert {k: v for k, v in ours.items() if k != "num_hidden_layers"} == \
            {k: v for k, v in theirs.items() if k != "num_hidden_layers"}, part
