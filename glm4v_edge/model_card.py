"""The artifacts folder's ``README.md``: a Hugging Face model card written from ``manifest.json``.

With it, ``hf upload`` of the folder publishes a usable repository: front matter the hub reads
(base model, library, pipeline, tags), what each file is, the parity measured at build time, how
to run it with glm4v-edge and with plain onnxruntime, and the commands that made it. It is a view
of the manifest, rewritten whenever the manifest is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from glm4v_edge.files import atomic_write_text
from glm4v_edge.names import DTYPE_SUFFIX, GRAPHS, MANIFEST_FILE, external_data_files, files_for, graph_file

CARD = "README.md"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GRAPH_ROLES = {
    "vision_encoder": "patches of one image or video frame pair -> merged image features",
    "embed_tokens": "token ids -> input embeddings",
    "decoder_model_merged": "embeddings + KV cache -> logits + new KV cache (prefill and decode)",
}


def write_model_card(folder: Path, manifest: dict) -> None:
    atomic_write_text(Path(folder) / CARD, model_card(Path(folder), manifest))


def model_card(folder: Path, manifest: dict) -> str:
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    source = manifest.get("source", {}).get("model", "")
    dtypes, variants = manifest.get("dtypes", []), manifest.get("variants", {})
    lines = ["---", *front_matter(source, dtypes, variants), "---", "",
             f"# {folder.name}: GLM-4.1V for cheaper hardware", "",
             f"Made by glm4v-edge {manifest.get('tools', {}).get('glm4v-edge', '')} from "
             f"`{source or 'a local checkpoint'}`" + (f" (revision `{manifest['source']['revision']}`)"
                                                     if manifest.get("source", {}).get("revision") else "") + ".",
             "Every file below is listed with its size and sha256 in `manifest.json`; glm4v-edge checks them "
             "before loading.", ""]
    lines += files_section(manifest, dtypes, variants)
    lines += parity_section(manifest, variants)
    lines += usage_section(dtypes, variants, config)
    lines += space_section(manifest, dtypes, variants)
    lines += made_by_section(manifest, variants)
    return "\n".join(lines) + "\n"


def front_matter(source: str, dtypes: list[str], variants: dict) -> list[str]:
    tags = ["glm4v", "glm4v-edge", "multimodal", "thinking"]
    if dtypes:
        tags += ["onnx", *(["int4"] if {"q4", "q4f16"} & set(dtypes) else []), *(["int8"] if "int8" in dtypes else [])]
    if variants:
        tags += ["gptq"]
    lines = [*([f"base_model: {source}"] if HUB_ID.match(source) else []),
             f"library_name: {'onnx' if dtypes else 'transformers'}", "pipeline_tag: image-text-to-text", "tags:"]
    return lines + [f"- {tag}" for tag in dict.fromkeys(tags)]


def _size(manifest: dict, names: list[str]) -> float:
    return sum(manifest["files"][name]["bytes"] for name in names if name in manifest.get("files", {})) / 1e6


def files_section(manifest: dict, dtypes: list[str], variants: dict) -> list[str]:
    lines = ["## Files", "", "| variant | files | size MB |", "|---|---|---|"]
    for dtype in dtypes:
        names = [name for graph in GRAPHS for path in [graph_file(graph, dtype)]
                 for name in (path, *external_data_files(path))]
        lines.append(f"| onnx-{dtype} | `onnx/*{DTYPE_SUFFIX[dtype]}.onnx` | {_size(manifest, names):.1f} |")
    for name, entry in variants.items():
        names = [file for file in manifest.get("files", {}) if file.startswith(entry["folder"] + "/")]
        lines.append(f"| {name} | `{entry['folder']}/` (a transformers checkpoint) | {_size(manifest, names):.1f} |")
    lines += ["", "Config, generation config, tokenizer, chat template and processor files are beside "
              "them (the source checkpoint's own).", ""]
    if manifest.get("weights"):  # how each precision's weights were made
        lines += [f"- onnx-{dtype}: {how}" for dtype, how in manifest["weights"].items()] + [""]
    return lines


def _parity_rows(label: str, results: dict) -> list[str]:
    return [f"| {label} | {prompt} | {r['greedy_match']}/{r['reference_tokens']} | {r['top1_agreement']:.1%} | "
            f"{r['mean_kl']:.2e} |" for prompt, r in results.items()]


def parity_section(manifest: dict, variants: dict) -> list[str]:
    lines = ["## Parity with the source", "",
             "Measured when the files were made, on four fixed prompts (text only, one image, two images of "
             "different aspect ratios, a video): how many of the source's greedy reply tokens the variant "
             "reproduces, and teacher-forced on that reply, top-1 agreement and mean KL(source || variant).", ""]
    parity = manifest.get("parity")
    rows = []
    if parity and parity.get("measured", True):
        rows += _parity_rows_for(parity)
    elif parity:
        lines += [f"ONNX parity not measured: {parity['reason']}.", ""]
    for name, entry in variants.items():
        rows += _parity_rows(name, entry["parity"]["results"])
    if rows:
        reference = parity.get("reference") if parity and parity.get("measured", True) else None
        reference = reference or next(iter(variants.values()))["parity"]["reference"]
        lines += [f"Reference: `{reference}`.", "", "| variant | prompt | greedy match | top-1 | mean KL |",
                  "|---|---|---|---|---|", *rows, ""]
    return lines


def _parity_rows_for(parity: dict) -> list[str]:
    return [row for dtype, results in parity["results"].items() for row in _parity_rows(f"onnx-{dtype}", results)]


def usage_section(dtypes: list[str], variants: dict, config: dict) -> list[str]:
    chosen = f"onnx-{'q4' if 'q4' in dtypes else dtypes[0]}" if dtypes else next(iter(variants), "torch")
    lines = ["## Use it", "", "With glm4v-edge (streaming, thinking split from the answer, images and video, a "
             "thinking budget, a web chat), by this repository's id (REPO_ID below): only the files of the variant "
             "you run are downloaded, each checked against `manifest.json`.", "", "```bash",
             'pip install "glm4v-edge[all]"',
             f'glm4v-edge chat "What is in this picture?" --image photo.jpg --variant {chosen} --artifacts REPO_ID',
             "glm4v-edge demo --artifacts REPO_ID       # each variant's files download when it is first chosen",
             f"glm4v-edge serve --variant {chosen} --artifacts REPO_ID@COMMIT   # pinned to one revision",
             "```", ""]
    if variants:
        name, entry = next(iter(variants.items()))
        lines += [f"`{entry['folder']}/` loads in transformers (`Glm4vForConditionalGeneration.from_pretrained(repo, "
                  f"subfolder=\"{entry['folder']}\")`, with GPTQModel installed) and in vLLM "
                  f"(`vllm serve` on the downloaded `{entry['folder']}` folder).", ""]
    if dtypes:
        lines += onnxruntime_section(dtypes, config)
    return lines


def onnxruntime_section(dtypes: list[str], config: dict) -> list[str]:
    text, vision = config.get("text_config", {}), config.get("vision_config", {})
    heads = text.get("num_key_value_heads", "KV_HEADS")
    head_dim = text.get("head_dim") or (text["hidden_size"] // text["num_attention_heads"] if text else "HEAD_DIM")
    patch = vision.get("in_channels", 3) * vision.get("temporal_patch_size", 2) * vision.get("patch_size", 14) ** 2
    layers = text.get("num_hidden_layers", "N")
    lines = ["With plain onnxruntime: the graphs follow onnx-community's layout; a precision suffix selects the "
             f"file ({', '.join(f'`{d}`' for d in dtypes)}). Each graph:", ""]
    lines += [f"- `onnx/{graph}.onnx`: {role}" for graph, role in GRAPH_ROLES.items()]
    lines += ["", "| graph | inputs | outputs |", "|---|---|---|",
              f"| vision_encoder | `pixel_values` float (patches, {patch}) from the processor; `grid_thw` int64 "
              "(1, 3) = (1, h, w) in patches; `position_ids` int64 (patches, 2), the (h, w) of each patch in the "
              "processor's merge-block order | `image_features` (patches / merge², hidden) |",
              "| embed_tokens | `input_ids` int64 (batch, sequence) | `inputs_embeds` (batch, sequence, hidden) |",
              "| decoder_model_merged | `inputs_embeds` (batch, sequence, hidden), image tokens replaced by image "
              "features; `attention_mask` int64 (batch, past + sequence); `position_ids` int64 (3, batch, sequence), "
              "GLM's 3-axis M-RoPE positions (transformers' `Glm4vModel.get_rope_index`); `num_logits_to_keep` "
              f"int64 scalar; `past_key_values.{{0..{layers - 1 if isinstance(layers, int) else 'N-1'}}}.key/value` "
              f"(batch, {heads}, past, {head_dim}), empty (past 0) on the first call | `logits` (batch, keep, "
              f"vocab); `present.{{i}}.key/value` (batch, {heads}, past + sequence, {head_dim}) |", "",
              "One vision call per image or video frame pair. glm4v-edge's `OnnxVariant` "
              "(`glm4v_edge/runtime/onnx_variant.py`) is a complete host loop to copy.", ""]
    return lines


def space_section(manifest: dict, dtypes: list[str], variants: dict) -> list[str]:
    """A Hugging Face Space that serves this repository: the app in the Space, the weights here."""
    chosen = f"onnx-{'q4' if 'q4' in dtypes else dtypes[0]}" if dtypes else next(iter(variants), None)
    if chosen is None:
        return []
    files = ",".join([MANIFEST_FILE, *files_for(manifest, chosen)])
    return ["## On a Hugging Face Space", "",
            "Keep the weights here and the app in the Space (the glm4v-edge repository as it stands). In the "
            f"Space's settings set `GLM4V_EDGE_ARTIFACTS=REPO_ID` and `GLM4V_EDGE_VARIANT={chosen}`; to have the "
            f"files in place when the Space starts, add to its README front matter (only {chosen}'s files):", "",
            "```yaml", "preload_from_hub:", f"  - REPO_ID {files}", "```", ""]


def made_by_section(manifest: dict, variants: dict) -> list[str]:
    commands = [manifest["export"]["command"]] if "export" in manifest else []
    commands += [entry["command"] for entry in variants.values() if "command" in entry]
    if not commands:
        return []
    machine = manifest.get("machine", {})
    return ["## How it was made", "", "```bash", *commands, "```", "",
            f"On {machine.get('gpu') or machine.get('cpu', 'an unrecorded machine')}"
            + (f" ({manifest['export']['seconds']:.0f} s, peak resident memory "
               f"{manifest['export']['peak_rss_mib'] / 1024:.1f} GiB)" if "export" in manifest else "") + "."]
