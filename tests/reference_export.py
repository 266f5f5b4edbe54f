"""The in-memory export the streaming export replaced, kept only to prove the two equal: the
whole model loaded in fp32, each graph exported with its weights by ``torch.onnx.export(dynamo=True)``
(optimised), then each precision converted from the whole fp32 graph by onnxruntime's converters."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from glm4v_edge import checkpoint
from glm4v_edge.export.graphs import SPECS
from glm4v_edge.export.precisions import (
    convs_over_whole_input_to_matmul,
    int8_options,
    quiet_converters,
    to_fp16,
    to_q4,
    without_value_info,
)
from glm4v_edge.export.settings import Q4Settings
from glm4v_edge.names import GRAPHS, ONNX_DTYPES, graph_file


def _save(model: onnx.ModelProto, path: Path) -> None:
    large = model.ByteSize() > 1.8e9 if model.ByteSize() >= 0 else True
    onnx.save_model(model, str(path), save_as_external_data=large, location=path.name + "_data" if large else None)


def convert(fp32_path: Path, dtype: str, out_path: Path, q4: Q4Settings) -> None:
    if dtype == "int8":
        from onnxruntime.quantization import quantize_dynamic

        with quiet_converters():
            model = convs_over_whole_input_to_matmul(onnx.load_model(str(fp32_path)))
            quantize_dynamic(without_value_info(model), out_path, **int8_options())
        return
    model = onnx.load_model(str(fp32_path))
    if dtype in ("fp16", "q4f16"):
        model = to_fp16(model)
    if dtype in ("q4", "q4f16"):
        model = to_q4(model, q4)
    _save(model, out_path)


def export_in_memory(model: str | None, out: Path, q4: Q4Settings = Q4Settings()) -> Path:
    loaded = checkpoint.load_model(model, dtype=torch.float32, device="cpu")
    (out / "onnx").mkdir(parents=True)
    for graph in GRAPHS:
        path = out / graph_file(graph, "fp32")
        with torch.no_grad():
            program = SPECS[graph](loaded).export()
        large = sum(t.numel() * t.element_size() for t in program.exported_program.state_dict.values()) > 1.8e9
        program.save(str(path), external_data=large)
        for dtype in ONNX_DTYPES[1:]:
            convert(path, dtype, out / graph_file(graph, dtype), q4)
    return out


if __name__ == "__main__":  # run by conftest in the background while other tests go on
    import sys

    export_in_memory(None, Path(sys.argv[1]))
