"""What vLLM needs from a GPTQ checkpoint, checked without vLLM (it needs a GPU to run).

vLLM reads ``quantization_config`` from config.json (``quant_method: gptq``, ``bits``,
``group_size``, ``desc_act``, ``sym``, ``lm_head``) and picks its GPTQ-Marlin kernel when the
settings allow, else the slower exllama GPTQ kernel. GLM-4.1V's q/k/v projections load into one
fused qkv linear and ``gate_up_proj`` stays one linear, so those must share bits and group size.
"""

from __future__ import annotations

# vLLM's gptq_marlin: 4 or 8 bits, symmetric, these group sizes (any desc_act).
MARLIN_BITS = (4, 8)
MARLIN_GROUP_SIZES = (-1, 32, 64, 128)
GPTQ_BITS = (2, 3, 4, 8)  # vLLM's plain GPTQ kernel


def vllm_problems(quantization_config: dict) -> list[str]:
    """Why vLLM would refuse this config (first entries) or fall back from Marlin (``slow: ...``)."""
    problems = []
    if quantization_config.get("quant_method") != "gptq":
        problems.append(f"quant_method is {quantization_config.get('quant_method')!r}, not 'gptq'")
    if quantization_config.get("checkpoint_format", "gptq") != "gptq":
        problems.append(f"checkpoint_format {quantization_config.get('checkpoint_format')!r}: vLLM reads 'gptq' (v1)")
    bits, group = quantization_config.get("bits"), quantization_config.get("group_size")
    if bits not in GPTQ_BITS:
        problems.append(f"bits {bits} not in {GPTQ_BITS}")
    for key in ("desc_act", "sym", "lm_head"):
        if not isinstance(quantization_config.get(key, False), bool):
            problems.append(f"{key} must be true or false")
    if quantization_config.get("lm_head"):
        problems.append("lm_head is quantized; vLLM's GLM-4.1V loads an unquantized lm_head")
    if bits not in MARLIN_BITS or group not in MARLIN_GROUP_SIZES or not quantization_config.get("sym", True):
        problems.append(f"slow: bits={bits}, group_size={group}, sym={quantization_config.get('sym')} "
                        f"rule out the Marlin kernel (needs bits {MARLIN_BITS}, group {MARLIN_GROUP_SIZES}, sym)")
    return problems


def serve_command(folder: str, max_model_len: int = 32768) -> str:
    """The vLLM command that serves the checkpoint (vLLM detects GPTQ and picks Marlin itself)."""
    return (f"vllm serve {folder} --max-model-len {max_model_len} "
            "--limit-mm-per-prompt '{\"image\": 10, \"video\": 1}'")
