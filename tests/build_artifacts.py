"""The test session's build of the embedded model (run by conftest in a background process while
tests that need no artifacts go on): every ONNX precision and a GPTQ int4 checkpoint, one manifest."""

from __future__ import annotations

import sys
from pathlib import Path

GPTQ_CALIBRATION = 16  # enough for GPTQ on the tiny model (bits, parity and answers are checked)
ONNX_DTYPES = ("fp32", "fp16", "q4", "q4f16", "int8")


def build(out: Path) -> Path:
    from glm4v_edge.export.onnx_export import export_onnx
    from glm4v_edge.export.settings import ExportSettings
    from glm4v_edge.quant.gptq import quantize_gptq
    from glm4v_edge.quant.settings import GptqSettings

    export_onnx(None, out, ExportSettings(ONNX_DTYPES))
    quantize_gptq(None, out / "gptq-int4", GptqSettings(calibration=GPTQ_CALIBRATION))
    return out


if __name__ == "__main__":
    build(Path(sys.argv[1]))
