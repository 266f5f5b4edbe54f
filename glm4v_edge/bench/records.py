"""What every ``glm4v-edge bench`` measurement record shares with the benchmark's own: the
schema version, its ``kind`` (the subcommand that wrote it), name, date, machine and settings;
and where it goes: ``<name>-<machine>-<date>.json`` beside a short Markdown table."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import date
from pathlib import Path

from glm4v_edge.bench.report import SCHEMA_VERSION, machine_slug, slug
from glm4v_edge.files import atomic_write_text
from glm4v_edge.hub import hub_reference


def plain(settings) -> dict:
    """A settings dataclass as JSON values (paths as text)."""
    return json.loads(json.dumps(asdict(settings), default=str))


def new_record(kind: str, name: str, what: str, settings: dict) -> dict:
    """The fields every record starts with; the measurement adds its results."""
    from glm4v_edge.machine import describe_machine

    return {"schema_version": SCHEMA_VERSION, "kind": kind, "name": name, "date": date.today().isoformat(),
            "what": what, "machine": describe_machine(), "settings": settings}


def record_name(name: str | None, kind: str, *artifacts: str | Path | None) -> str:
    """``name``, else the kind, followed by the build's folder (or hub repo) name when there is one."""
    builds = [build for build in artifacts if build]
    if name:
        return name
    return f"{kind}-{Path(str(builds[0])).name}" if len(builds) == 1 else kind


def results_folder(out: Path | None, artifacts: str | Path | None) -> Path:
    """As the benchmark's: ``out``, else ``<artifacts>/bench`` (``artifacts/<repo>/bench`` for a hub
    repo), else ``artifacts/bench``; committed results are written there on purpose, with --out."""
    if out is not None:
        return Path(out)
    if artifacts is None:
        return Path("artifacts/bench")
    source = hub_reference(artifacts)
    return Path("artifacts") / source.repo.split("/")[1] / "bench" if source else Path(artifacts) / "bench"


def write_record(record: dict, folder: Path, markdown: str) -> list[Path]:
    """The record as JSON and its Markdown table under ``folder``: [json, md]."""
    stem = Path(folder) / f"{slug(record['name'])}-{machine_slug(record['machine'])}-{record['date']}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
    atomic_write_text(md_path, markdown)
    return [json_path, md_path]


def table(head: list[str], rows: list[list]) -> list[str]:
    """A Markdown table's lines; None cells show as a dash."""
    def cell(value) -> str:
        return "–" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(head) + " |", "|---" * len(head) + "|",
            *("| " + " | ".join(cell(value) for value in row) + " |" for row in rows)]


def heading(record: dict) -> list[str]:
    """The title and machine line every Markdown table starts with."""
    machine = record["machine"]
    return [f"# {record['name']} · {record['date']}", "",
            f"Measured: {record['what']}. Machine: {machine.get('gpu') or machine.get('cpu')} · "
            f"{machine.get('cpu_cores')} cores.", ""]
