#!/usr/bin/env python3
"""Run llama.cpp's convert_hf_to_gguf.py on a glm4v-edge checkpoint (the random medium / 9b shapes).

Why a wrapper: the converter identifies a BPE tokenizer's pre-tokenizer by hashing the ids it
produces for a fixed test string (get_vocab_base_pre / chkhsh) and refuses unknown hashes.
glm4v-edge checkpoints carry the project's SMALL byte-level BPE (450 merges-trained tokens plus
GLM's 22 real special tokens), so the hash is necessarily unknown. Everything else in the
converter (the Glm4vForConditionalGeneration -> GLM4 arch mapping, M-RoPE Q/K permutation,
vision-tensor skipping, [PADn] padding up to config vocab_size) runs unmodified.

What the wrapper does, and nothing more: when the stock hash table does not know the tokenizer,
it checks the tokenizer's *structure* in tokenizer.json and, only if the pre-tokenizer is a plain
HF ByteLevel(use_regex=True) with no normalizer -- i.e. exactly GPT-2's regex split -- it answers
"gpt-2", the llama.cpp pre-tokenizer whose regex is that same GPT-2 regex. Anything else still
fails as the stock converter would. (Labelling it "glm4" would be wrong: llama.cpp's glm4 type uses
a llama3-style regex and ignore_merges, which does not match this tokenizer.)

The real GLM-4.1V tokenizer is known to the converter and never reaches the fallback.

Usage (same arguments as convert_hf_to_gguf.py; to_gguf.sh calls it):
    LLAMA_CPP_DIR=/path/to/llama.cpp PYTHONPATH=$LLAMA_CPP_DIR/gguf-py python convert.py MODEL_DIR \
        --outfile X.gguf --outtype q8_0
Env:
    LLAMA_CPP_DIR       the llama.cpp source tree (build.sh prints it)
    GLM4V_EDGE_TOKPRE   force a tokenizer.ggml.pre value instead of the structural check (debugging only)
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
import re
import runpy
import sys
from hashlib import sha256
from pathlib import Path

LLAMA_CPP_DIR = Path(os.environ.get("LLAMA_CPP_DIR", ".")).resolve()
CONVERT = LLAMA_CPP_DIR / "convert_hf_to_gguf.py"
if not CONVERT.is_file():
    sys.exit(f"convert_hf_to_gguf.py not found under {LLAMA_CPP_DIR} (set LLAMA_CPP_DIR)")

sys.path.insert(0, str(LLAMA_CPP_DIR))
from conversion import base  # noqa: E402  (the converter's own module, imported before it runs)

log = logging.getLogger("glm4v-edge-convert")
_stock_pre = base.TextModel.get_vocab_base_pre


def _is_gpt2_byte_level(model_dir: Path) -> tuple[bool, str]:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return False, "no tokenizer.json"
    tok = json.loads(path.read_text())
    pre, norm, model = tok.get("pre_tokenizer"), tok.get("normalizer"), tok.get("model", {})
    ok = (
        model.get("type") == "BPE"
        and norm is None
        and isinstance(pre, dict)
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) is True
        and pre.get("add_prefix_space", False) is False
    )
    return ok, f"model={model.get('type')} normalizer={norm} pre_tokenizer={pre}"


def _get_vocab_base_pre(self, tokenizer) -> str:
    forced = os.environ.get("GLM4V_EDGE_TOKPRE")
    if forced:
        log.warning("tokenizer.ggml.pre forced to %r by GLM4V_EDGE_TOKPRE", forced)
        return forced
    hf_log = logging.getLogger("hf-to-gguf")
    level = hf_log.level
    hf_log.setLevel(logging.ERROR)  # the stock banner is replaced by our own message below
    try:
        return _stock_pre(self, tokenizer)
    except NotImplementedError:
        ok, why = _is_gpt2_byte_level(Path(self.dir_model))
        if not ok:
            raise
        src = inspect.getsource(_stock_pre)
        chktxt = ast.literal_eval(re.search(r"chktxt = (.+)\n", src).group(1))  # the converter's own test string
        chkhsh = sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()
        log.warning("unknown BPE chkhsh %s (glm4v-edge small tokenizer: %s) -> tokenizer.ggml.pre='gpt-2'",
                    chkhsh, why)
        return "gpt-2"
    finally:
        hf_log.setLevel(level)


base.TextModel.get_vocab_base_pre = _get_vocab_base_pre

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.argv = [str(CONVERT), *sys.argv[1:]]
    runpy.run_path(str(CONVERT), run_name="__main__")
