"""How the ONNX q4's int4 weights are chosen: GPTQ's own (repacked into MatMulNBits), HQQ, or
round to nearest; the manifest says which."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.export.gptq_weights import GptqCheckpoint
from glm4v_edge.manifest import read_manifest
from glm4v_edge.names import graph_file
from glm4v_edge.runtime.registry import load_variant
from tests.conftest import assert_one_line_error, run_cli

pytest.importorskip("gptqmodel")

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_up_proj",
           "mlp.down_proj")


def matmul_nbits(x: np.ndarray, weight, k: int, n: int) -> np.ndarray:
    """One MatMulNBits node on ``weight``'s tensors, run by onnxruntime (fp32 compute: no int8 activations)."""
    inputs = ["x", "packed", "scales", *(["zero_points"] if weight.zero_points is not None else [])]
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=weight.block_size)
    initializers = [numpy_helper.from_array(weight.packed, "packed"), numpy_helper.from_array(weight.scales, "scales")]
    if weight.zero_points is not None:
        initializers.append(numpy_helper.from_array(weight.zero_points, "zero_points"))
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], initializers)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


@pytest.mark.parametrize("linear", LINEARS)
def test_repacked_weights_compute_what_gptqmodel_dequantizes(artifacts, linear):
    """MatMulNBits on the repacked tensors = GPTQModel's own dequantized weight times the input."""
    gptq = GptqCheckpoint(artifacts / "gptq-int4")
    variant = load_variant("gptq-int4", artifacts=artifacts, device="cpu")
    module = variant.model.model.language_model.layers[1].get_submodule(linear)
    with torch.inference_mode():
        reference = module.dequantize_weight().float().numpy()  # (K, N), as GPTQModel computes it
    key = f"model.language_model.layers.1.{linear}.weight"
    k, n = reference.shape
    weight = gptq.nbits(key, (k, n))
    assert weight.block_size == 128 and weight.zero_points is None  # symmetric: MatMulNBits' default zero point
    exact = gptq.dequantized(key)  # scale * (code - zero) in fp32; GPTQModel computes it in fp16
    np.testing.assert_allclose(exact, reference, rtol=2**-10, atol=2**-14)
    x = np.random.default_rng(0).standard_normal((5, k)).astype(np.float32)
    np.testing.assert_allclose(matmul_nbits(x, weight, k, n), x @ exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul_nbits(x, weight, k, n), x @ reference, rtol=1e-2, atol=1e-3)


def test_split_gate_up_halves_are_joined_and_act_order_is_refused(artifacts, tmp_path):
    """A GPTQModel checkpoint as GPTQModel writes it (gate_proj and up_proj apart) reads as GLM's
    fused gate_up_proj; one quantized with act-order cannot be MatMulNBits (groups are consecutive)."""
    source = artifacts / "gptq-int4"
    split = tmp_path / "split"
    shutil.copytree(source, split)
    tensors = load_file(split / "model.safetensors")
    fused = "model.language_model.layers.0.mlp.gate_up_proj"
    width = tensors[f"{fused}.scales"].shape[1] // 2
    for part in ("qweight", "qzeros", "scales"):
        whole = tensors.pop(f"{fused}.{part}")
        cut = width if part != "qzeros" else width // 8
        tensors[f"{fused.replace('gate_up', 'gate')}.{part}"] = np.ascontiguousarray(whole[:, :cut])
        tensors[f"{fused.replace('gate_up', 'up')}.{part}"] = np.ascontiguousarray(whole[:, cut:])
    g_idx = tensors.pop(f"{fused}.g_idx")
    tensors[f"{fused.replace('gate_up', 'gate')}.g_idx"] = tensors[f"{fused.replace('gate_up', 'up')}.g_idx"] = g_idx
    save_file(tensors, split / "model.safetensors")
    key = f"{fused}.weight"
    np.testing.assert_array_equal(GptqCheckpoint(split).dequantized(key), GptqCheckpoint(source).dequantized(key))

    shuffled = load_file(source / "model.safetensors")
    name = "model.language_model.layers.0.mlp.down_proj.g_idx"
    shuffled[name] = np.random.default_rng(0).permutation(shuffled[name]).astype(np.int32)
    save_file(shuffled, split / "model.safetensors")
    with pytest.raises(Glm4vEdgeError, match="act-order"):
        GptqCheckpoint(split).nbits("model.language_model.layers.0.mlp.down_proj.weight", (384, 128))


def test_the_q4_export_carries_gptq_weights_and_says_so(artifacts, tmp_path):
    result = run_cli("export", "onnx", "--out", str(tmp_path / "gptq"), "--dtypes", "q4", "--q4-method", "gptq",
                     "--gptq", str(artifacts / "gptq-int4"))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "gptq")
    assert manifest["q4"]["method"] == "gptq" and "GPTQ checkpoint gptq-int4" in manifest["weights"]["q4"]
    decoder = onnx.load(tmp_path / "gptq" / graph_file("decoder_model_merged", "q4"), load_external_data=False)
    blocks = sorted({helper.get_attribute_value(a) for node in decoder.graph.node if node.op_type == "MatMulNBits"
                     for a in node.attribute if a.name == "block_size"})
    assert blocks == [128, 256]  # the decoder's linears at GPTQ's groups, lm_head round-to-nearest at 256
    # The text prompt's distributions, the one 4-bit rounding moves most: GPTQ's weights move them less.
    rtn = read_manifest(artifacts)["parity"]["results"]["q4"]["text"]
    gptq = manifest["parity"]["results"]["q4"]["text"]
    assert gptq["greedy_match"] >= rtn["greedy_match"] and gptq["top1_agreement"] >= rtn["top1_agreement"]
    assert "--q4-method gptq" in manifest["export"]["command"]
    card = (tmp_path / "gptq" / "README.md").read_text()
    assert "- onnx-q4: int4: the decoder's linears from the GPTQ checkpoint" in card


def test_hqq_export_answers(tmp_path):
    result = run_cli("export", "onnx", "--out", str(tmp_path / "hqq"), "--dtypes", "q4", "--q4-method", "hqq",
                     "--no-parity")
    assert result.returncode == 0, result.stderr
    decoder = onnx.load(tmp_path / "hqq" / graph_file("decoder_model_merged", "q4"), load_external_data=False)
    nodes = [node for node in decoder.graph.node if node.op_type == "MatMulNBits"]
    assert nodes and all(len(node.input) >= 4 for node in nodes)  # HQQ's float zero points
    assert all(any(a.name == "accuracy_level" for a in node.attribute) for node in nodes)
    assert "HQQ" in json.loads((tmp_path / "hqq" / "manifest.json").read_text())["weights"]["q4"]
    chat = run_cli("chat", "How many shapes are in the image?", "--image", "examples/count-shapes.png",
                   "--variant", "onnx-q4", "--artifacts", str(tmp_path / "hqq"), "--max-new-tokens", "8")
    assert chat.returncode == 0, chat.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--q4-method", "gptq"], "takes its weights from --gptq"),
    (["--q4-method", "awq"], "unknown q4 method 'awq'"),
])
def test_bad_q4_settings_are_one_line(tmp_path, args, fragment):
    assert_one_line_error(run_cli("export", "onnx", "--out", str(tmp_path / "x"), "--dtypes", "q4", *args), fragment)


def test_a_folder_that_is_not_gptq_is_refused(tmp_path):
    from glm4v_edge.checkpoint import embedded_model_dir

    with pytest.raises(Glm4vEdgeError, match="is not a GPTQ checkpoint"):
        GptqCheckpoint(embedded_model_dir())
