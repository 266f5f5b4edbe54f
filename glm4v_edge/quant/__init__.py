"""Quantized checkpoints: GPTQ int4 (and RTN, its baseline) by GPTQModel."""
