"""Put a GPTQModel checkpoint back into GLM-4.1V's own tensor layout.

GPTQModel quantizes the decoder MLP as two linears (its ``defuser`` splits GLM's fused
``gate_up_proj`` into ``gate_proj`` + ``up_proj``) and saves them that way, which
``Glm4vForConditionalGeneration`` cannot load. Both halves see the same input, so with the
same bits, group size and (with act-order) the same ``g_idx`` they concatenate along the
output dimension into one GPTQ ``gate_up_proj``: exactly the layout of the published
checkpoint, which transformers and vLLM (its merged gate_up linear) load as is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from glm4v_edge.errors import Glm4vEdgeError

INDEX = "model.safetensors.index.json"
GATE, UP, FUSED = ".mlp.gate_proj.", ".mlp.up_proj.", ".mlp.gate_up_proj."
# Only the decoder's MLP is fused in GLM; the vision blocks' gate/up are separate by design.
DECODER = "language_model.layers."


def _is_decoder_half(name: str, half: str) -> bool:
    return DECODER in name and half in name


def shard_map(folder: Path) -> dict[str, str]:
    """tensor name -> shard file name."""
    index = folder / INDEX
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    single = folder / "model.safetensors"
    if not single.is_file():
        raise Glm4vEdgeError(f"no safetensors weights in {folder}")
    with safe_open(single, "pt") as handle:
        return {name: single.name for name in handle.keys()}


def fuse_gate_up(folder: Path) -> int:
    """Rewrite the shards of ``folder`` with every decoder gate/up pair fused; return the pairs fused."""
    weight_map = shard_map(folder)
    handles = {shard: safe_open(folder / shard, "pt") for shard in set(weight_map.values())}
    new_map: dict[str, str] = {}
    fused = 0
    try:
        for shard in sorted(handles):
            tensors: dict[str, torch.Tensor] = {}
            for name in handles[shard].keys():
                if _is_decoder_half(name, UP):
                    continue  # written with its gate half
                if not _is_decoder_half(name, GATE):
                    tensors[name] = handles[shard].get_tensor(name)
                    continue
                up_name = name.replace(GATE, UP)
                if up_name not in weight_map:
                    raise Glm4vEdgeError(f"{name} has no matching {up_name} in {folder}")
                gate, up = handles[shard].get_tensor(name), handles[weight_map[up_name]].get_tensor(up_name)
                if name.endswith(".g_idx"):
                    # act-order: both halves share the input's column order, so one g_idx serves both
                    if not torch.equal(gate, up):
                        raise Glm4vEdgeError(f"{name} and {up_name} were quantized with different column orders")
                    tensors[name.replace(GATE, FUSED)] = gate
                else:  # qweight, qzeros, scales, bias: output features are the last dimension
                    tensors[name.replace(GATE, FUSED)] = torch.cat([gate, up], dim=-1)
                    fused += name.endswith(".qweight")
            temporary = folder / f".{shard}.fused"
            save_file(tensors, temporary, metadata={"format": "pt"})
            new_map.update(dict.fromkeys(tensors, shard))
            os.replace(temporary, folder / shard)  # the old handle keeps the old file's data alive
    finally:
        handles.clear()
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())
        index["weight_map"] = dict(sorted(new_map.items()))
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return fused
