"""``manifest.json`` of an artifacts folder: what was built from what, and the files' hashes.

Export writes it last (inside the staging folder); loading checks every file it opens
against it, so a truncated or swapped file is named instead of failing deep in onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.files import atomic_write_text
from glm4v_edge.model_card import CARD, write_model_card
from glm4v_edge.names import MANIFEST_FILE

MANIFEST = MANIFEST_FILE
FORMAT_VERSION = 1

def sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path) -> dict[str, dict]:
    """Every file under ``folder`` (but the manifest and the model card made from it) -> size and sha256."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder).as_posix() not in (MANIFEST, CARD):
            entries[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    return entries


def write_manifest(folder: Path, record: dict) -> dict:
    """manifest.json (and the model card, its view) for an artifacts folder."""
    manifest = {"format_version": FORMAT_VERSION, **record, "files": file_entries(folder)}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    write_model_card(folder, manifest)
    return manifest


def record_variant(folder: Path, name: str, entry: dict) -> dict:
    """Add or replace variant ``name``, kept in subfolder ``folder``, in its parent's manifest.

    Its files are listed (size + sha256) under ``<subfolder>/`` beside the ONNX graphs; the
    parent's manifest is created if the subfolder is the first thing built there.
    """
    folder = Path(folder)
    root = folder.parent
    manifest = read_manifest(root) if (root / MANIFEST).is_file() else {"format_version": FORMAT_VERSION}
    prefix = f"{folder.name}/"
    files = {key: value for key, value in manifest.get("files", {}).items() if not key.startswith(prefix)}
    files.update({prefix + key: value for key, value in file_entries(folder).items()})
    manifest.setdefault("variants", {})[name] = entry
    manifest["files"] = dict(sorted(files.items()))
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    write_model_card(root, manifest)
    return manifest


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise Glm4vEdgeError(f"artifacts folder not found: {folder}")
    if not path.is_file():
        raise Glm4vEdgeError(f"{folder} has no {MANIFEST}; it is not a finished glm4v-edge export")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Glm4vEdgeError(f"{path} is not valid JSON: {error}") from None


_VERIFIED: set[tuple] = set()  # (real path, size, mtime, sha256) already hashed in this process


def verify_file(folder: Path, manifest: dict, name: str) -> Path:
    """``folder/name`` after checking its size and sha256 against the manifest (a file unchanged
    since it was checked in this process is not hashed again)."""
    entry = manifest.get("files", {}).get(name)
    path = Path(folder) / name
    if entry is None:
        raise Glm4vEdgeError(f"{name} is not listed in {folder}/{MANIFEST}; was it exported?")
    if not path.is_file():
        raise Glm4vEdgeError(f"{path} is missing (listed in {MANIFEST})")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise Glm4vEdgeError(f"{path} is {size} bytes, the manifest says {entry['bytes']}: truncated or replaced")
    stat = path.stat()
    seen = (str(path.resolve()), size, stat.st_mtime_ns, entry["sha256"])
    if seen in _VERIFIED:
        return path
    if sha256(path) != entry["sha256"]:
        raise Glm4vEdgeError(f"{path} does not match its sha256 in {MANIFEST}: corrupted or replaced")
    _VERIFIED.add(seen)
    return path
