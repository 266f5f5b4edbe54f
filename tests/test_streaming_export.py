"""The bounded-memory export: the same files as the in-memory export it replaced, a model card,
and bad sources refused in one line before anything is written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from glm4v_edge import checkpoint
from glm4v_edge.names import files_for
from glm4v_edge.tiny import build
from glm4v_edge.tiny.random_checkpoint import write_random_checkpoint
from tests.conftest import assert_one_line_error, run_cli


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # its reference export costs ~36 s of CPU beside the default suite (CI runs it)
def test_same_files_as_the_in_memory_export(artifacts, in_memory_onnx):
    """Every graph of every precision, byte for byte: graphs, initializers and their order."""
    reference = in_memory_onnx
    names = sorted(path.name for path in reference.iterdir())
    assert len(names) == 15
    assert names == sorted(path.name for path in (artifacts / "onnx").iterdir())
    for name in names:
        assert digest(reference / name) == digest(artifacts / "onnx" / name), name


@pytest.mark.slow
def test_forced_side_files_spills_and_blocks_give_the_same_graphs(in_memory_onnx, tmp_path):
    """Knobs that make the tiny model take every path a 9B takes (side files, spilled tensors,
    blocked quantization): graphs and weights still equal the in-memory export's."""
    import onnx
    from onnx import numpy_helper

    from glm4v_edge.export.settings import Q4Settings
    from glm4v_edge.export.streaming import export_graphs
    from glm4v_edge.names import ONNX_DTYPES
    from glm4v_edge.weights import CheckpointReader

    reference = in_memory_onnx
    export_graphs(CheckpointReader(checkpoint.embedded_model_dir()), tmp_path / "forced", ONNX_DTYPES, Q4Settings(),
                  inline_limit=0, spill_threshold=0, block_bytes=4096)
    for path in sorted(reference.glob("*.onnx")):
        ours, theirs = onnx.load(str(tmp_path / "forced" / "onnx" / path.name)), onnx.load(str(path))
        assert [n.SerializeToString() for n in ours.graph.node] == [n.SerializeToString() for n in theirs.graph.node]
        assert [t.name for t in ours.graph.initializer] == [t.name for t in theirs.graph.initializer]
        for a, b in zip(ours.graph.initializer, theirs.graph.initializer):
            assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes(), (path.name, a.name)


def test_model_card_is_written_from_the_manifest(artifacts):
    card = (artifacts / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "pipeline_tag: image-text-to-text" in front and "- onnx" in front and "- gptq" in front
    assert "| onnx-q4 | `onnx/*_q4.onnx` |" in card and "| gptq-int4 | `gptq-int4/`" in card
    assert "| onnx-fp32 | text | 19/19 | 100.0% |" in card  # the parity the manifest holds
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["export"]["command"] in card and manifest["variants"]["gptq-int4"]["command"] in card
    assert "past_key_values.{0..3}.key/value` (batch, 2, past, 32)" in card  # the tiny model's cache shape
    assert "README.md" not in manifest["files"]  # the card is a view of the manifest, not an artifact
    # The Space recipe preloads exactly the files onnx-q4 opens.
    preload = card.split("preload_from_hub:\n  - REPO_ID ")[1].split("\n")[0].split(",")
    assert sorted(preload) == sorted(["manifest.json", *files_for(manifest, "onnx-q4")])
    assert "--artifacts REPO_ID" in card and "GLM4V_EDGE_ARTIFACTS=REPO_ID" in card


@pytest.mark.slow  # ~30 s: a second export (CI runs it)
def test_no_parity_writes_the_graphs_without_the_source_model(tmp_path):
    result = run_cli("export", "onnx", "--out", str(tmp_path / "q4"), "--dtypes", "q4", "--no-parity")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "q4" / "manifest.json").read_text())
    assert manifest["parity"] == {"measured": False, "reason": "--no-parity"}
    assert "parity not measured" in result.stderr
    assert sorted(p.name for p in (tmp_path / "q4" / "onnx").iterdir()) == [
        "decoder_model_merged_q4.onnx", "embed_tokens_q4.onnx", "vision_encoder_q4.onnx"]


@pytest.fixture
def sharded(tmp_path, monkeypatch) -> Path:
    """The tiny architecture with random weights in several shards."""
    original = build.write_random_weights
    monkeypatch.setattr(build, "write_random_weights",
                        lambda config, out, dtype: original(config, out, dtype, shard_bytes=1 << 20))
    return write_random_checkpoint("tiny", tmp_path / "sharded", dtype="fp32")


def export_fails(model: Path, out: Path, *fragments: str) -> None:
    assert_one_line_error(run_cli("export", "onnx", "--model", str(model), "--out", str(out), "--dtypes", "q4"),
                          *fragments)
    assert not out.exists() and not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_missing_and_truncated_shards_are_named(sharded, tmp_path):
    shards = sorted(sharded.glob("model-*.safetensors"))
    shards[2].unlink()
    export_fails(sharded, tmp_path / "out", "shard missing", shards[2].name)
    truncated = shards[1]  # checked before the missing one
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    export_fails(sharded, tmp_path / "out", truncated.name, "truncated")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    source = tmp_path / "deeper"
    shutil.copytree(checkpoint.embedded_model_dir(), source)
    config = json.loads((source / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] += 1  # a layer the weights do not have
    (source / "config.json").write_text(json.dumps(config))
    export_fails(source, tmp_path / "out", "no tensor model.language_model.layers.4.", "do not match config.json")
    config["text_config"]["num_hidden_layers"] -= 1
    config["text_config"]["intermediate_size"] += 8  # every MLP weight the wrong shape
    (source / "config.json").write_text(json.dumps(config))
    export_fails(source, tmp_path / "out", "has shape", "do not match config.json")


def test_too_little_free_disk_is_refused_before_writing(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path)._replace(free=10_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    export_fails(checkpoint.embedded_model_dir(), tmp_path / "out", "GB free", "needs about")


def test_scratch_file_holds_one_precision_at_a_time(tmp_path):
    """What a written precision spilled is dropped; what was spilled before the mark stays readable."""
    from onnx import TensorProto

    from glm4v_edge.export.virtual_tensors import TensorStore

    store = TensorStore(tmp_path / "scratch", spill_threshold=4)
    kept_tensor = TensorProto(name="skeleton", data_type=TensorProto.UINT8, dims=[8], raw_data=bytes(range(8)))
    store.spill(kept_tensor)
    kept = store.mark()
    store.write(bytes(1000))  # one precision's converted tensors
    store.release(kept)
    assert (tmp_path / "scratch").stat().st_size == kept == 8
    assert store.data(kept_tensor) == bytes(range(8))
    assert store.write(b"next") == (8, 4)  # the next precision reuses the space
    store.close()
    assert not (tmp_path / "scratch").exists()


def test_torch_older_than_the_tested_exporter_is_refused(tmp_path, monkeypatch):
    import torch
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.11.0+cu130"))
    export_fails(checkpoint.embedded_model_dir(), tmp_path / "out", "ONNX export needs torch >= 2.14", "2.11.0")


def test_repeated_cast_nodes_of_older_fp16_converters_are_kept_once():
    """onnxruntime 1.30's float16 converter repeats one Cast per consumer (same name and output)."""
    import onnx
    from onnx import TensorProto, helper

    from glm4v_edge.export.precisions import without_repeated_nodes

    cast = helper.make_node("Cast", ["x"], ["x_fp32"], name="x_cast_to_fp32_node", to=TensorProto.FLOAT)
    graph = helper.make_graph(
        [cast, onnx.NodeProto.FromString(cast.SerializeToString()), helper.make_node("Neg", ["x_fp32"], ["y"]),
         helper.make_node("Abs", ["x_fp32"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in ("y", "z")])
    model = without_repeated_nodes(helper.make_model(graph))
    assert [node.op_type for node in model.graph.node] == ["Cast", "Neg", "Abs"]
    onnx.checker.check_model(model, full_check=True)
