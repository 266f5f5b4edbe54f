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


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.slow  # ~25 s: an export through the CLI, with parity (CI runs it)
def test_the_q4_export_carries_gptq_weights_and_says_so(artifacts, tmp_path):
    result = run_cli("export", "onnx", "--out", str(tmp_path / "gptq"), "--dtypes", "q4", "--q4-method", "gptq",
                     "--gptq", str(artifacts / "gptq-int4"), "--vocab-bits", "8", "--vision-bits", "8")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "gptq")
    assert manifest["q4"]["method"] == "gptq" and "GPTQ checkpoint gptq-int4" in manifest["weights"]["q4"]
    assert "embeddings and lm_head 8-bit" in manifest["weights"]["q4"] and manifest["q4"]["vocab_bits"] == 8
    decoder = onnx.load(tmp_path / "gptq" / graph_file("decoder_model_merged", "q4"), load_external_data=False)
    formats = {(attributes(node)["bits"], attributes(node)["block_size"]) for node in decoder.graph.node
               if node.op_type == "MatMulNBits"}
    assert formats == {(4, 128), (8, 128)}  # the decoder's linears at GPTQ's groups, lm_head 8-bit
    embed = onnx.load(tmp_path / "gptq" / graph_file("embed_tokens", "q4"), load_external_data=False)
    assert [attributes(node)["bits"] for node in embed.graph.node if node.op_type == "GatherBlockQuantized"] == [8]
    vision = onnx.load(tmp_path / "gptq" / graph_file("vision_encoder", "q4"), load_external_data=False)
    vision_bits = [attributes(node).get("bits") for node in vision.graph.node if node.op_type == "MatMulNBits"]
    assert vision_bits and set(vision_bits) == {8}
    assert not [node for node in vision.graph.node if node.op_type == "MatMul"]  # every linear quantized
    # The text prompt's distributions, the one 4-bit rounding moves most: these weights move them less.
    rtn = read_manifest(artifacts)["parity"]["results"]["q4"]["text"]
    gptq = manifest["parity"]["results"]["q4"]["text"]
    assert gptq["greedy_match"] >= rtn["greedy_match"] and gptq["top1_agreement"] >= rtn["top1_agreement"]
    assert gptq["mean_kl"] < rtn["mean_kl"]
    assert "--q4-method gptq" in manifest["export"]["command"] and "--vision-bits 8" in manifest["export"]["command"]
    card = (tmp_path / "gptq" / "README.md").read_text()
    assert "- onnx-q4: int4: the decoder's linears from the GPTQ checkpoint" in card


def test_8_bit_vocabulary_matrices_compute_their_dequantized_weights():
    """Embeddings (GatherBlockQuantized) and lm_head (MatMulNBits) at 8 bits: what onnxruntime
    computes is the 8-bit codes' weights, within 8-bit rounding of the fp32 ones."""
    from glm4v_edge.export.precisions import to_q4
    from glm4v_edge.export.settings import Q4Settings

    rng = np.random.default_rng(0)
    table, head = rng.standard_normal((40, 256)).astype(np.float32), rng.standard_normal((256, 40)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["inputs_embeds"], name="embed"),
             helper.make_node("MatMul", ["inputs_embeds", "head"], ["logits"], name="lm_head")]
    graph = helper.make_graph(nodes, "vocabulary", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [3, 256]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [3, 40])],
                              [numpy_helper.from_array(table, "table"), numpy_helper.from_array(head, "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    quantized = to_q4(model, Q4Settings(vocab_bits=8, accuracy_level=0))
    assert sorted((node.op_type, attributes(node)["bits"]) for node in quantized.graph.node) == [
        ("GatherBlockQuantized", 8), ("MatMulNBits", 8)]
    ids = np.array([0, 7, 39])
    embeds, logits = ort.InferenceSession(quantized.SerializeToString()).run(None, {"input_ids": ids})
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in quantized.graph.initializer}
    codes, scales = weights["table_Q8"].astype(np.float32), weights["table_scales"]
    dequantized = ((codes - 128).reshape(40, 2, 128) * scales[..., None]).reshape(40, 256)
    np.testing.assert_allclose(embeds, dequantized[ids], rtol=1e-6)
    np.testing.assert_allclose(embeds, table[ids], atol=np.abs(table).max() / 254 + 1e-6)
    matmul = next(node for node in quantized.graph.node if node.op_type == "MatMulNBits")
    head_codes, head_scales = weights[matmul.input[1]].astype(np.float32), weights[matmul.input[2]]
    zero = weights[matmul.input[3]].astype(np.float32)[..., None] if len(matmul.input) > 3 else 128  # its default
    head_dequantized = ((head_codes - zero) * head_scales[..., None]).reshape(40, 256).T
    np.testing.assert_allclose(logits, embeds @ head_dequantized, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head_dequantized, head, atol=np.abs(head).max() / 254 + 1e-6)


@pytest.mark.slow  # ~25 s: an export through the CLI (CI runs it)
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


def test_convs_over_their_whole_input_become_the_same_matmul():
    """The patch embedding's Conv3d and the merger's 2x2 Conv2d (kernel = stride = input) compute
    the same as MatMuls; a Conv that slides over its input is left alone."""
    from glm4v_edge.export.precisions import convs_over_whole_input_to_matmul

    rng = np.random.default_rng(0)
    cases = {"patches": ([3, 2, 14, 14], [8, 3, 2, 14, 14], [2, 14, 14]),
             "merge": ([6, 2, 2], [5, 6, 2, 2], [2, 2]),
             "slides": ([6, 4, 4], [5, 6, 2, 2], [2, 2])}
    for name, (per_row, kernel, strides) in cases.items():
        weight, bias = rng.standard_normal(kernel).astype(np.float32), rng.standard_normal(kernel[0]).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=kernel[2:], strides=strides)],
            name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", *per_row])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        x = rng.standard_normal((7, *per_row)).astype(np.float32)
        expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        rewritten = convs_over_whole_input_to_matmul(model)
        ops = [node.op_type for node in rewritten.graph.node]
        assert ops == (["Conv"] if name == "slides" else ["Reshape", "MatMul", "Add", "Reshape"]), (name, ops)
        got = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)  # sums of 1176 products in fp32


@pytest.mark.slow  # ~20 s: an export through the CLI (CI runs it)
def test_int8_vision_kernel_is_matmulinteger_and_closer_than_4_bit(artifacts, tmp_path):
    """``--vision-bits 8 --vision-kernel matmulinteger``: the q4 vision encoder's linears run
    onnxruntime's dynamic int8 (MatMulInteger), the decoder keeps MatMulNBits, and the image
    features stay near fp32's: nearer than the 4-bit vision encoder's."""
    from glm4v_edge.runtime.inputs import build_batch
    from glm4v_edge.runtime.onnx_variant import OnnxVariant

    out = tmp_path / "int8-vision"
    result = run_cli("export", "onnx", "--out", str(out), "--dtypes", "q4", "--vision-bits", "8",
                     "--vision-kernel", "matmulinteger", "--no-parity")
    assert result.returncode == 0, result.stderr
    vision = onnx.load(out / graph_file("vision_encoder", "q4"), load_external_data=False)
    ops = [node.op_type for node in vision.graph.node]
    assert "MatMulInteger" in ops and not {"MatMulNBits", "MatMul", "Gemm", "Conv", "ConvInteger"} & set(ops)
    decoder = onnx.load(out / graph_file("decoder_model_merged", "q4"), load_external_data=False)
    assert "MatMulNBits" in {node.op_type for node in decoder.graph.node}
    manifest = read_manifest(out)
    assert manifest["q4"]["vision_kernel"] == "matmulinteger" and "MatMulInteger" in manifest["weights"]["q4"]
    assert "--vision-kernel matmulinteger" in manifest["export"]["command"]

    ours = OnnxVariant(out, dtype="q4")
    batch = ours._numpy_batch(build_batch(ours.processor, [[{"role": "user", "content": [
        {"type": "image", "image": "examples/count-shapes.png"}, {"type": "text", "text": "?"}]}]]))
    features = {name: variant.vision_features(batch) for name, variant in (
        ("fp32", OnnxVariant(artifacts, dtype="fp32")), ("4-bit", OnnxVariant(artifacts, dtype="q4")),
        ("int8", ours))}
    error = {name: np.linalg.norm(features[name] - features["fp32"]) / np.linalg.norm(features["fp32"])
             for name in ("4-bit", "int8")}
    assert error["int8"] < 0.03 and error["int8"] < error["4-bit"] / 2, error


@pytest.mark.parametrize("args, fragment", [
    (["--q4-method", "gptq"], "takes its weights from --gptq"),
    (["--q4-method", "awq"], "unknown q4 method 'awq'"),
    (["--vocab-bits", "6"], "--vocab-bits 6: choose 4 or 8"),
    (["--vision-bits", "2"], "--vision-bits 2: choose 4 or 8"),
    (["--vision-kernel", "xnnpack"], "--vision-kernel xnnpack: choose matmulnbits or matmulinteger"),
    (["--vision-kernel", "matmulinteger"], "is an 8-bit kernel: pass --vision-bits 8"),
])
def test_bad_q4_settings_are_one_line(tmp_path, args, fragment):
    assert_one_line_error(run_cli("export", "onnx", "--out", str(tmp_path / "x"), "--dtypes", "q4", *args), fragment)


def test_a_folder_that_is_not_gptq_is_refused(tmp_path):
    from glm4v_edge.checkpoint import embedded_model_dir

    with pytest.raises(Glm4vEdgeError, match="is not a GPTQ checkpoint"):
        GptqCheckpoint(embedded_model_dir())


@pytest.mark.slow  # ~3 min: GPTQ, the export and a benchmark of both
def test_build_ships_gptq_weights_as_its_onnx_q4(tmp_path):
    """`glm4v-edge build` quantizes with GPTQ first, and its onnx-q4 carries those weights (vision
    and vocabulary at 8 bits); the folder keeps the GPTQ checkpoint beside the graphs."""

    from glm4v_edge.export.settings import ExportSettings
    from glm4v_edge.pipeline import BUILD_Q4, BuildSettings, build

    settings = BuildSettings(export=ExportSettings(("q4",), BUILD_Q4, parity=False), prompts="none", runs=1)
    record, _ = build(None, tmp_path / "tiny", settings, threads=2)
    manifest = read_manifest(tmp_path / "tiny")
    assert manifest["dtypes"] == ["q4"] and list(manifest["variants"]) == ["gptq-int4"]
    assert manifest["q4"]["gptq"] == str(tmp_path / "tiny" / "gptq-int4")
    assert "GPTQ checkpoint gptq-int4" in manifest["weights"]["q4"]
    assert (manifest["q4"]["vocab_bits"], manifest["q4"]["vision_bits"]) == (8, 8)
    vision = onnx.load(tmp_path / "tiny" / graph_file("vision_encoder", "q4"), load_external_data=False)
    assert {attributes(node).get("bits") for node in vision.graph.node if node.op_type == "MatMulNBits"} == {8}
    assert any(name.startswith("gptq-int4/") for name in manifest["files"])
    assert record["summary"]["onnx-q4"]["status"] == "ok" and record["summary"]["gptq-int4"]["status"] == "ok"
    card = (tmp_path / "tiny" / "README.md").read_text()
    assert "- onnx-q4: int4: the decoder's linears from the GPTQ checkpoint" in card
