"""ONNX export of the embedded model: every precision, the KV-cache runtime, parity, manifest."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pytest

from glm4v_edge import shapes
from glm4v_edge.checkpoint import load_config
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.export.onnx_export import check_parity
from glm4v_edge.manifest import read_manifest
from glm4v_edge.names import GRAPHS, graph_file
from glm4v_edge.runtime.inputs import build_batch, extend_batch
from glm4v_edge.runtime.onnx_variant import OnnxVariant
from glm4v_edge.runtime.registry import load_variant
from glm4v_edge.runtime.variant import MeasurableVariant, Sampling, Variant, collect
from tests.conftest import ONNX_DTYPES, assert_one_line_error, run_cli

DTYPES = ONNX_DTYPES


@pytest.fixture(scope="module")
def onnx_fp32(artifacts):
    return OnnxVariant(artifacts, dtype="fp32", device="cpu")


def test_folder_is_self_contained_onnx_community_layout(artifacts):
    for name in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
                 "processor_config.json", "manifest.json"):
        assert (artifacts / name).is_file(), name
    manifest = read_manifest(artifacts)
    for graph in GRAPHS:
        for dtype in DTYPES:
            entry = manifest["files"][graph_file(graph, dtype)]
            assert entry["bytes"] == (artifacts / graph_file(graph, dtype)).stat().st_size
            assert len(entry["sha256"]) == 64
    assert manifest["source"]["model_type"] == "glm4v"
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest["tools"])
    assert not [p for p in artifacts.parent.iterdir() if ".partial-" in p.name]  # staging folder renamed away


def test_int4_graphs_are_smaller(artifacts):
    size = {d: (artifacts / graph_file("decoder_model_merged", d)).stat().st_size for d in DTYPES}
    assert size["q4"] < size["int8"] < size["fp16"] < size["fp32"]
    vision = {d: (artifacts / graph_file("vision_encoder", d)).stat().st_size for d in ("fp32", "q4")}
    assert vision["q4"] < 0.7 * vision["fp32"]  # the vision tower's Gemms were quantized too


def test_parity_recorded_for_every_dtype(artifacts):
    results = read_manifest(artifacts)["parity"]["results"]
    assert set(results) == set(DTYPES)
    for prompts in results.values():
        assert set(prompts) == {"text", "image", "two_images", "video"}
    # fp32 is the same computation: identical greedy replies, distributions equal to rounding.
    for result in results["fp32"].values():
        assert result["exact"] and result["top1_agreement"] == 1.0 and result["mean_kl"] < 1e-6
    # fp16 rounds activations to 11 bits; on this model that moves no greedy choice and the
    # KL stays ~1e-6 (measured 6e-6 at most), so 1e-4 leaves room for other CPUs' kernels.
    for result in results["fp16"].values():
        assert result["exact"] and result["mean_kl"] < 1e-4
    # int8 and int4 weights change the numbers measurably: KL up to ~1e-2 on the text-only
    # prompt (outside the task the model was trained on), ~1e-4 on the task's own prompts,
    # where the top-1 choice should hardly ever move.
    for dtype in ("int8", "q4", "q4f16"):
        for prompt, result in results[dtype].items():
            assert result["mean_kl"] < 0.1, (dtype, prompt)
            if prompt != "text":
                assert result["top1_agreement"] >= 0.9 and result["mean_kl"] < 1e-2, (dtype, prompt)


def parity_result(exact: bool = True, mean_kl: float = 0.0) -> dict:
    return {"reference_tokens": 8, "greedy_match": 8 if exact else 3, "exact": exact,
            "top1_agreement": 1.0, "mean_kl": mean_kl}


def test_export_refuses_broken_graphs_but_keeps_lossy_ones():
    lossy = {"fp32": {"text": parity_result()}, "q4": {"text": parity_result(exact=False, mean_kl=0.05)}}
    check_parity(lossy, exact_fp32=True)
    # NaN or inf logits: a broken graph (or an onnxruntime that runs it wrong), whatever the precision
    for kl in (float("nan"), float("inf")):
        with pytest.raises(Glm4vEdgeError, match=r"fp16 ONNX graphs give non-finite logits .* on: image \(onnxruntime"):
            check_parity({**lossy, "fp16": {"text": parity_result(), "image": parity_result(False, kl)}}, True)
    # fp32 graphs must repeat an fp32 source's greedy replies; from a bf16 source they need not
    inexact = {"fp32": {"text": parity_result(), "video": parity_result(exact=False, mean_kl=1e-3)}}
    with pytest.raises(Glm4vEdgeError, match="does not reproduce the source's greedy output on: video"):
        check_parity(inexact, exact_fp32=True)
    check_parity(inexact, exact_fp32=False)


def test_onnx_variant_is_a_measurable_variant(onnx_fp32):
    assert isinstance(onnx_fp32, Variant) and isinstance(onnx_fp32, MeasurableVariant)
    assert onnx_fp32.name == "onnx-fp32"


@pytest.mark.parametrize("qtype", ["count", "two_images", "motion"])
def test_fp32_generates_the_torch_reply(tiny_variant, onnx_fp32, qtype):
    sample = shapes.heldout(qtype, 1)
    ours = collect(onnx_fp32.generate(sample.messages(), max_new_tokens=80, sampling=Sampling.greedy()))
    theirs = collect(tiny_variant.generate(sample.messages(), max_new_tokens=80, sampling=Sampling.greedy()))
    assert ours.token_ids == theirs.token_ids
    assert ours.reply.final_answer == sample.answer


@pytest.mark.parametrize("new_tokens", [0, 12], ids=["cache-grown-when-full", "cache-with-room"])
def test_kv_cache_decode_equals_full_recompute(onnx_fp32, new_tokens):
    """The preallocated cache, written in place: with room for the reply (as generate() allocates
    it), and with room for the prompt only, moved to a larger one when a step finds it full. A
    step reads the whole room, the positions not yet written masked: the runtime zero-fills them
    (leftover memory could hold NaN, which no mask removes)."""
    assert onnx_fp32.shared_cache and onnx_fp32.manifest["kv_cache"] == "preallocated-masked"
    sample = shapes.heldout("color")
    batch = build_batch(onnx_fp32.processor, [sample.messages()])
    prompt = batch["input_ids"].shape[1]
    logits, state = onnx_fp32.prefill(batch, new_tokens=new_tokens)
    cache = state.past
    assert cache[0].shape()[2] == prompt + new_tokens
    assert all(not host[:, :, prompt:].any() for host in state.host)
    stepped, tokens = [logits[0]], []
    for _ in range(12):
        tokens.append(int(stepped[-1].argmax()))
        stepped.append(onnx_fp32.step(state, np.array(tokens[-1:]))[0])
    full = onnx_fp32.forward_logits(extend_batch(batch, tokens))[0]
    np.testing.assert_allclose(np.stack(stepped), full[prompt - 1:], atol=1e-4)
    in_place = [value is before for value, before in zip(state.past, cache)]
    assert all(in_place) if new_tokens else not any(in_place)
    assert state.past[0].shape()[2] == (prompt + 12 if new_tokens else 2 * prompt)


def test_batch_of_two_left_padded_prompts(tiny_variant, onnx_fp32):
    samples = [shapes.heldout("count"), shapes.heldout("shape", 2)]  # different image sizes: different lengths
    batch = build_batch(onnx_fp32.processor, [s.messages() for s in samples])
    mask = batch["attention_mask"].numpy().astype(bool)
    assert not mask.all()  # one row really is padded
    ours, theirs = onnx_fp32.forward_logits(batch), tiny_variant.forward_logits(batch)
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4)
    # Batched greedy decode with either cache matches each prompt decoded alone.
    for new_tokens in (0, 8):
        logits, state = onnx_fp32.prefill(batch, new_tokens=new_tokens)
        together = []
        for _ in range(8):
            tokens = logits.argmax(-1)
            together.append(tokens)
            logits = onnx_fp32.step(state, tokens)
        for row, sample in enumerate(samples):
            alone = collect(onnx_fp32.generate(sample.messages(), max_new_tokens=8, sampling=Sampling.greedy()))
            assert [int(t[row]) for t in together][:len(alone.token_ids)] == alone.token_ids


def test_video_through_onnx_q4(artifacts):
    variant = load_variant("onnx-q4", artifacts=artifacts, device="cpu")
    sample = shapes.heldout("motion", 2)
    result = collect(variant.generate(sample.messages(), max_new_tokens=80, sampling=Sampling.greedy()))
    assert result.reply.final_answer in shapes.DIRECTIONS


def test_vision_and_decoder_precisions_can_differ(artifacts):
    variant = OnnxVariant(artifacts, dtype="q4", vision_dtype="fp32", device="cpu")
    assert variant.name == "onnx-q4+vision-fp32"
    messages = shapes.heldout("color").messages()
    result = collect(variant.generate(messages, max_new_tokens=80, sampling=Sampling.greedy()))
    assert result.reply.final_answer


def test_thinking_budget_zero_through_onnx(onnx_fp32):
    result = collect(onnx_fp32.generate(shapes.heldout("count").messages(), max_new_tokens=40,
                                        sampling=Sampling.greedy(), thinking_budget=0))
    assert result.text.startswith("<think></think><answer>")


def test_chat_cli_with_onnx_variant(artifacts):
    media = shapes.make_sample("heldout", 0).images[0]
    image = artifacts.parent / "count.png"
    media.save(image)
    result = run_cli("chat", "How many shapes?", "--image", str(image), "--variant", "onnx-int8",
                     "--artifacts", str(artifacts), "--greedy", "--max-new-tokens", "60")
    assert result.returncode == 0, result.stderr
    assert "onnx-int8" in result.stderr


@pytest.fixture
def damaged_copy(artifacts, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(artifacts, copy)
    return copy


def test_sha256_mismatch_is_a_clear_error(damaged_copy):
    path = damaged_copy / graph_file("decoder_model_merged", "fp32")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Glm4vEdgeError, match="decoder_model_merged.onnx does not match its sha256"):
        OnnxVariant(damaged_copy, dtype="fp32", device="cpu")


def test_truncated_graph_is_a_clear_error(damaged_copy):
    path = damaged_copy / graph_file("vision_encoder", "q4")
    path.write_bytes(path.read_bytes()[:1000])
    result = run_cli("chat", "hi", "--variant", "onnx-q4", "--artifacts", str(damaged_copy))
    assert_one_line_error(result, "vision_encoder_q4.onnx", "truncated")


def test_missing_dtype_and_missing_folder_are_clear_errors(damaged_copy, tmp_path):
    with pytest.raises(Glm4vEdgeError, match="artifacts folder not found"):
        OnnxVariant(tmp_path / "nowhere")
    manifest = json.loads((damaged_copy / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if "_q4f16" not in k}
    (damaged_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Glm4vEdgeError, match="has no q4f16 export"):
        OnnxVariant(damaged_copy, dtype="q4f16")
    assert_one_line_error(run_cli("chat", "hi", "--variant", "onnx-q4"), "--artifacts")


def test_export_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    result = run_cli("export", "onnx", "--out", str(tmp_path), "--dtypes", "q4")
    assert_one_line_error(result, "not empty", "--overwrite")
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_unknown_dtype_is_a_clear_error(tmp_path):
    assert_one_line_error(run_cli("export", "onnx", "--out", str(tmp_path / "x"), "--dtypes", "q3"), "q3")


def test_fp16_graph_keeps_reductions_in_fp32(artifacts):
    import onnx

    model = onnx.load(str(artifacts / graph_file("decoder_model_merged", "fp16")))
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs["inputs_embeds"] == onnx.TensorProto.FLOAT16
    ops = {n.op_type for n in model.graph.node}
    assert "Cast" in ops  # casts around the ops kept in fp32
    # the decode attention's softmax, inside an If branch, has its casts in that branch
    branches = [a.g for n in model.graph.node if n.op_type == "If" for a in n.attribute]
    for branch in (g for g in branches if any(n.op_type == "Softmax" for n in g.node)):
        made_by = {output: n.op_type for n in branch.node for output in n.output}
        softmax = next(n for n in branch.node if n.op_type == "Softmax")
        read_by = {n.op_type for n in branch.node if softmax.output[0] in n.input}
        assert made_by[softmax.input[0]] == "Cast" and read_by == {"Cast"}


@pytest.mark.parametrize("dtype", ["fp32", "q4"])
def test_graphs_use_onnxruntime_fused_ops(artifacts, dtype):
    """One fused node per norm and rotary; per layer, the cache written by two ScatterND, then an
    If: one grouped product per key/value head for a decode step, GroupQueryAttention for a
    prefill. The vision tower's attention fused."""
    import onnx

    from glm4v_edge.export.precisions import every_node

    text = load_config(artifacts).text_config
    graph = onnx.load(str(artifacts / graph_file("decoder_model_merged", dtype)), load_external_data=False).graph
    decoder = collections.Counter(n.op_type for n in graph.node)
    layers = text.num_hidden_layers
    assert decoder["ScatterND"] == 2 * layers and decoder["If"] == layers
    branches = collections.Counter(n.op_type for n in every_node(graph)) - decoder
    assert branches["GroupQueryAttention"] == layers and branches["FusedMatMul"] == layers
    assert branches["Softmax"] == layers and decoder["Softmax"] == 0  # the decode branch's, none unfused
    assert decoder["RotaryEmbedding"] == 2 * layers
    assert decoder["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert decoder["SimplifiedLayerNormalization"] == 2 * layers + 1  # 2 branch norms per layer + the first
    assert decoder["Pow"] == 0
    # one node makes each value, across the branches too (onnxruntime 1.24's float16 converter
    # places its casts by value name: a name both branches used sent a cast into the wrong one)
    made = collections.Counter(name for n in every_node(graph) for name in n.output if name)
    assert [name for name, count in made.items() if count > 1] == []
    vision = collections.Counter(n.op_type for n in onnx.load(
        str(artifacts / graph_file("vision_encoder", dtype)), load_external_data=False).graph.node)
    assert vision["MultiHeadAttention"] == load_config(artifacts).vision_config.depth and vision["Softmax"] == 0


def test_same_seed_samples_the_same_tokens_on_torch_and_onnx(tiny_variant, onnx_fp32):
    """Both loops use transformers' logits processors and torch's generator: one seed, one reply."""
    sampling = Sampling(do_sample=True, temperature=4.0, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=11)
    messages = shapes.heldout("count", 2).messages()
    ours = collect(onnx_fp32.generate(messages, max_new_tokens=48, sampling=sampling)).token_ids
    theirs = collect(tiny_variant.generate(messages, max_new_tokens=48, sampling=sampling)).token_ids
    assert ours == theirs
    greedy = collect(onnx_fp32.generate(messages, max_new_tokens=48, sampling=Sampling.greedy())).token_ids
    assert ours != greedy  # it really sampled


def test_checkpoint_generation_config_knobs_apply_to_onnx(onnx_fp32):
    """A knob the old hand-wired list ignored (min_p) is in the processors the ONNX loop runs."""
    import torch
    from transformers import LogitsProcessorList, MinPLogitsWarper

    from glm4v_edge.runtime.generation import generation_settings, host_logits_processors

    config = generation_settings(onnx_fp32.generation_config, Sampling(do_sample=True), 8, onnx_fp32.tokens.pad)
    config.min_p = 0.2
    ids = torch.tensor([[1, 2, 3]])
    processors = host_logits_processors(onnx_fp32.config, config, ids, torch.ones_like(ids), LogitsProcessorList())
    assert any(isinstance(p, MinPLogitsWarper) for p in processors)


@pytest.mark.parametrize("device, fragment", [
    ("cuda", "no CUDA execution provider"), ("cuda:1", "no CUDA execution provider"),
    ("cuda:x", "cpu, cuda or cuda:N"), ("cpu:1", "cpu, cuda or cuda:N"), ("tpu", "cpu, cuda or cuda:N"),
])
def test_devices_are_checked_before_loading(artifacts, device, fragment):
    """This machine's onnxruntime is the CPU build: asking for CUDA names what is missing."""
    assert_one_line_error(run_cli("chat", "Hi", "--variant", "onnx-q4", "--artifacts", str(artifacts),
                                  "--device", device), fragment)
