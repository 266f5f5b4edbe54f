"""Artifacts from the Hugging Face Hub: ``--artifacts user/repo[@revision]`` fetches only what a
variant opens.

``manifest.json`` comes first (it pins the revision to the commit it was read at, and lists every
file with its size and sha256); then the files of the variants asked for, with huggingface_hub
into its own cache (reused, ``HF_HUB_OFFLINE`` honoured, each file written whole or not at all),
each checked against the manifest before use. The result is a folder (the cache's snapshot of
that commit) that every loader reads as it reads a local build. Errors name their cause in one
line: no such repo, gated or unauthorised, offline and not cached, not a glm4v-edge export, a
file that does not match, too little disk.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from glm4v_edge.errors import Glm4vEdgeError, first_line
from glm4v_edge.manifest import MANIFEST, read_manifest, verify_file
from glm4v_edge.names import files_for
from glm4v_edge.progress import SILENT, Progress

REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
DISK_MARGIN = 1 << 30  # left free beyond the files themselves


@dataclass(frozen=True)
class HubArtifacts:
    repo: str
    revision: str | None  # as asked (None: the default branch)

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")


def hub_reference(artifacts: str | Path | None) -> HubArtifacts | None:
    """``user/repo[@revision]`` when ``artifacts`` names no folder here and reads as a repo id."""
    if artifacts is None or Path(artifacts).exists():
        return None
    found = REPO_ID.match(str(artifacts))
    return HubArtifacts(found["repo"], found["revision"]) if found else None


def artifacts_manifest(artifacts: str | Path) -> dict:
    """The manifest of a build, a local folder or a hub repo (only its manifest is fetched)."""
    source = hub_reference(artifacts)
    return hub_manifest(source)[0] if source else read_manifest(Path(artifacts))


def artifacts_folder(artifacts: str | Path, variants: list[str], vision_dtype: str | None = None,
                     progress: Progress = SILENT) -> Path:
    """A local folder holding what ``variants`` open: the folder itself, or the hub repo's files
    fetched into the cache (``fetch``)."""
    source = hub_reference(artifacts)
    return fetch(source, variants, vision_dtype, progress) if source else Path(artifacts)


def pinned(artifacts: str | Path) -> str:
    """What a run reports as its artifacts: the folder, or ``user/repo@<commit>`` as read."""
    source = hub_reference(artifacts)
    return f"{source.repo}@{hub_manifest(source)[1]}" if source else str(artifacts)


def hub_error(what: str, error: Exception) -> Glm4vEdgeError:
    """huggingface_hub's (or its HTTP client's) exception about ``what`` (e.g. "model 'org/x'")
    as one line naming the cause."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, LocalEntryNotFoundError) and error.__cause__ is not None and not constants.HF_HUB_OFFLINE:
        return hub_error(what, error.__cause__)  # not cached, and the hub said why it would not send it
    if isinstance(error, GatedRepoError):
        return Glm4vEdgeError(f"{what} is gated on the Hugging Face hub: accept its terms on its page, then log in "
                              "(`hf auth login` or HF_TOKEN)")
    if isinstance(error, RepositoryNotFoundError):
        return Glm4vEdgeError(f"no {what} on the Hugging Face hub: check the id (a private repo also needs a "
                              "token: HF_TOKEN)")
    if isinstance(error, RevisionNotFoundError):
        return Glm4vEdgeError(f"{what}: no such revision (branch, tag or commit) on the Hugging Face hub")
    if isinstance(error, LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
        return Glm4vEdgeError(f"{what} is not in the local Hugging Face cache and {why}: download it once on a "
                              "connected machine, or pass a local folder")
    if isinstance(error, EntryNotFoundError):
        return Glm4vEdgeError(f"{what}: not found on the Hugging Face hub")
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else "?"
        if status in (401, 403):
            return Glm4vEdgeError(f"not authorised to read {what} (HTTP {status}): set HF_TOKEN or run "
                                  "`hf auth login`")
        return Glm4vEdgeError(f"the Hugging Face hub answered HTTP {status} for {what}")
    if any("Timeout" in kind.__name__ for kind in type(error).__mro__):
        return Glm4vEdgeError(f"the Hugging Face hub did not answer within {constants.HF_HUB_ETAG_TIMEOUT:g} s for "
                              f"{what} (HF_HUB_ETAG_TIMEOUT sets the wait)")
    return Glm4vEdgeError(f"cannot reach the Hugging Face hub for {what} ({first_line(error)}): offline? Pass a local "
                          "folder, or set HF_HUB_OFFLINE=1 to use the cache")


def _download(source: HubArtifacts, name: str, revision: str | None, progress: Progress = SILENT) -> Path:
    """One file of the repo at ``revision`` from the cache, else downloaded into it (whole or not at all)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source.repo, name, revision=revision, tqdm_class=_progress_bar(progress)))


@functools.cache
def hub_manifest(source: HubArtifacts) -> tuple[dict, str, Path]:
    """The repo's manifest, the commit it was read at and that commit's snapshot folder."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = _download(source, MANIFEST, source.revision)
    except EntryNotFoundError as error:
        if isinstance(error, LocalEntryNotFoundError):
            raise hub_error(f"model repo '{source}'", error) from None
        raise Glm4vEdgeError(f"model repo '{source}' has no {MANIFEST}: it is not a glm4v-edge export (make one "
                             "with `glm4v-edge build` or `export onnx`, then `hf upload` the folder)") from None
    except Exception as error:  # huggingface_hub's own errors and the HTTP client's
        raise hub_error(f"model repo '{source}'", error) from None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Glm4vEdgeError(f"{MANIFEST} of {source} is not valid JSON: {error}") from None
    return manifest, path.parent.name, path.parent


def fetch(source: HubArtifacts, variants: list[str], vision_dtype: str | None = None,
          progress: Progress = SILENT) -> Path:
    """The snapshot folder holding the manifest and the files of ``variants``, downloaded if the
    cache lacks them (disk checked first) and each checked against the manifest."""
    from huggingface_hub import constants, try_to_load_from_cache

    manifest, commit, folder = hub_manifest(source)
    wanted = list(dict.fromkeys(name for variant in variants for name in files_for(manifest, variant, vision_dtype)))
    missing = [name for name in wanted if not isinstance(try_to_load_from_cache(source.repo, name, revision=commit),
                                                         str)]
    needed = sum(manifest["files"][name]["bytes"] for name in missing)
    if missing:
        cache = Path(constants.HF_HUB_CACHE)
        cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache).free
        if needed + DISK_MARGIN > free:
            raise Glm4vEdgeError(f"{', '.join(variants)} from {source} needs {needed / 1e9:.1f} GB more in the Hugging "
                                 f"Face cache ({cache}), which has {free / 1e9:.1f} GB free (set HF_HUB_CACHE to a "
                                 "bigger disk)")
        progress.start(f"downloading {', '.join(variants)} from {source}", len(missing))
        for name in missing:
            progress.step(f"{name} ({manifest['files'][name]['bytes'] / 1e6:.1f} MB)")
            try:
                _download(source, name, commit, progress)
            except Exception as error:  # huggingface_hub's own errors and the HTTP client's
                raise hub_error(f"{name} of '{source}'", error) from None
    for name in wanted:
        _verified(folder, manifest, name, source)
    return folder


def _verified(folder: Path, manifest: dict, name: str, source: HubArtifacts) -> None:
    """Check one cached file; one that does not match is removed from the cache (never used)."""
    try:
        verify_file(folder, manifest, name)
    except Glm4vEdgeError as error:
        path = folder / name
        blob = path.resolve()
        for stale in {path, blob}:
            if stale.exists() or stale.is_symlink():
                os.remove(stale)
        raise Glm4vEdgeError(f"{name} of {source} (commit {folder.name[:12]}) does not match {MANIFEST} ({error}); "
                             "removed from the cache: run again to download it again") from None


def _progress_bar(progress: Progress):
    """A tqdm class for huggingface_hub's byte counts that reports to ``progress`` and draws nothing."""
    if progress is SILENT:
        return None
    from tqdm.auto import tqdm

    class Reporting(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the bar)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            shown = super().update(n)
            if self.total:
                progress.written(int(self.n), int(self.total))
            return shown

        def close(self):
            file = self.fp
            super().close()
            file.close()

    return Reporting
