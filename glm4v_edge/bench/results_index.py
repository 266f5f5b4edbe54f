"""An index of a results folder: ``README.md``, one row per result JSON, what it measured, its
Markdown and PNG companions, and whether a later result replaces it (``glm4v-edge bench index``).

The results come from ``glm4v-edge bench`` and its subcommands (and, in older files, the scripts that
were in ``benchmarks/``), each with its own keys: a record's kind is its ``kind`` field (the
subcommand that wrote it), else the first of ``KINDS`` whose keys it holds; each kind has a small
function that says in a line what the record measured.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from glm4v_edge.bench.report import machine_slug, slug
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.files import atomic_write_text

INDEX_NAME = "README.md"
# Results a later one replaces though its name differs (a changed method, not a repeat):
# {"older.json": {"by": "newer.json", "why": "..."}}, committed beside the results.
SUPERSEDED_NAME = "superseded.json"
DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2})$")


def _names(items) -> str:
    return ", ".join(str(item) for item in items)


def _what(record: dict) -> str:
    return str(record.get("what", "")).rstrip(".")


def _settings(record: dict) -> dict:
    """What the measurement was asked for: its ``settings`` (the scripts' older files kept them at the top)."""
    return record.get("settings") or record


def describe_bench(record: dict) -> str:
    settings = record.get("settings", {})
    rows = [f"{row} (baseline)" if row == record["baseline"] else row for row in record["summary"]]
    prompts = settings.get("prompts", settings.get("prompt_set"))  # older records say prompt_set
    return f"variants {_names(rows)}; prompts {prompts}, device {settings.get('device')}"


def describe_conversation(record: dict) -> str:
    settings = record.get("settings", {})
    words = settings.get("answer_words", 0)
    answers = f"fixed {words}-word answers" if words else "the model's own answers"
    return f"{_what(record)}: {settings.get('variant')}, {answers}, {settings.get('max_tokens')} tokens per reply"


def _program(command: str) -> str:
    """``glm4v-edge export onnx`` out of a recorded command line, else its first word."""
    found = re.search(r"glm4v-edge( [a-z][a-z-]*)*", command)
    return found.group(0) if found else command.split()[0]


def describe_commands(record: dict) -> str:
    programs = Counter(_program(run["command"]) for run in record["runs"])  # in order of first use
    counted = [f"`{program}`" + (f" ×{count}" if count > 1 else "") for program, count in programs.items()]
    runs = len(record["runs"])
    # a name written as a sentence says more than the file name does
    title = f"{record['name']}: " if slug(record.get("name", "")) != record.get("name") else ""
    return f"{title}wall time and peak memory of {runs} command{'s' * (runs != 1)}: {_names(counted)}"


def describe_ttft(record: dict) -> str:
    settings = _settings(record)
    return f"{_what(record)}: {settings['variant']}, {settings.get('threads')} threads; {_names(record['results'])}"


def describe_decode_depth(record: dict) -> str:
    settings = _settings(record)
    return (f"{_what(record)}; {settings.get('dtype')}, contexts of {_names(record['depths'])} tokens, "
            f"{settings.get('steps')} steps each")


def describe_decode_profile(record: dict) -> str:
    return f"{_what(record)}: {_names(record['results'])}"


def describe_stage_profile(record: dict) -> str:
    settings = _settings(record)
    return (f"{_what(record)}: onnx-{settings.get('dtype')}, a {settings.get('size')}px image, "
            f"{settings.get('threads')} threads; {_names(record['stages'])}")


def describe_session_options(record: dict) -> str:
    settings = _settings(record)
    return (f"{_what(record)}: onnx-{settings.get('dtype')}, decode after {settings.get('past')} positions; "
            f"{_names(record['cases'])}")


def describe_vision_memory(record: dict) -> str:
    cases = [f"{model} ({_names(sizes)})" for model, sizes in record["results"].items()]
    return f"{_what(record)}: {_settings(record)['dtype']}; {'; '.join(cases)}"


def describe_space_check(record: dict) -> str:
    artifacts = re.search(r"--artifacts (\S+)", record.get("command", ""))
    folder = f", artifacts `{Path(artifacts.group(1)).name}`" if artifacts else ""
    settings = _settings(record)
    return f"{_what(record)}: {settings.get('image_px')}px image, {settings.get('max_new_tokens')} new tokens{folder}"


def describe_other(record) -> str:
    if isinstance(record, dict):
        return f"keys: {_names(record)}"
    return f"a JSON {type(record).__name__}"


@dataclass(frozen=True)
class Kind:
    name: str
    keys: frozenset[str]  # a record holding all of these is of this kind (first match in KINDS)
    made_by: str
    describe: Callable[[dict], str]


def _made_by(command: str, script: str) -> str:
    return f"`glm4v-edge bench {command}` (its older files: `benchmarks/{script}`)"


# Named as the subcommands that write them. For records without a `kind` field, most specific
# first: a conversation record also has `summary` and `runs`, a bench record `results`.
KINDS = [
    Kind("bench", frozenset({"baseline", "summary", "results"}), "`glm4v-edge bench`", describe_bench),
    Kind("conversation", frozenset({"summary", "runs"}), "`glm4v-edge bench conversation`", describe_conversation),
    Kind("record", frozenset({"runs"}), _made_by("record", "record_commands.py"), describe_commands),
    Kind("decode-depth", frozenset({"depths"}), _made_by("decode-depth", "decode_depth.py"), describe_decode_depth),
    Kind("space-check", frozenset({"demo_shows"}), _made_by("space-check", "space_check.py"), describe_space_check),
    Kind("decode-profile", frozenset({"onnxruntime", "results"}), _made_by("decode-profile", "decode_profile.py"),
         describe_decode_profile),
    Kind("stage-profile", frozenset({"stages", "peak"}), "`glm4v-edge bench stage-profile`", describe_stage_profile),
    Kind("session-options", frozenset({"cases", "shared_cache"}), "`glm4v-edge bench session-options`",
         describe_session_options),
    Kind("ttft", frozenset({"variant", "load_s", "results"}), _made_by("ttft", "cpu_profile_ttft.py"),
         describe_ttft),
    Kind("vision-memory", frozenset({"dtype", "results"}), _made_by("vision-memory", "vision_memory.py"),
         describe_vision_memory),
]
KIND_NAMED = {kind.name: kind for kind in KINDS}
OTHER = Kind("other", frozenset(), "an unknown writer (each row lists the record's top-level keys)", describe_other)


def kind_of(record) -> Kind:
    """The record's ``kind`` field, else the first kind whose keys it holds."""
    if isinstance(record, dict):
        if record.get("kind") in KIND_NAMED:
            return KIND_NAMED[record["kind"]]
        for kind in KINDS:
            if kind.keys <= record.keys():
                return kind
    return OTHER


@dataclass
class Entry:
    """One result JSON as the index shows it."""

    file: str
    kind: Kind
    date: str
    machine: str
    name_stem: str
    what: str
    companions: list[str]
    superseded_by: str | None = None
    why: str | None = None  # when a committed note says what replaced it


def machine_name(record) -> str:
    machine = record.get("machine") if isinstance(record, dict) else None
    if not isinstance(machine, dict):
        return "?"
    if machine.get("gpu"):
        return str(machine["gpu"])
    cores = f" ({machine['cpu_cores']} cores)" if machine.get("cpu_cores") else ""
    return f"{machine.get('cpu', '?')}{cores}"


def name_stem(stem: str, record) -> str:
    """The file name without its date and machine: what repeated runs of one measurement share."""
    stem = DATE_SUFFIX.sub("", stem)
    machine = record.get("machine") if isinstance(record, dict) else None
    if isinstance(machine, dict):
        stem = stem.removesuffix(f"-{machine_slug(machine)}")
    return stem


def record_date(stem: str, record) -> str:
    if isinstance(record, dict) and record.get("date"):
        return str(record["date"])
    found = DATE_SUFFIX.search(stem)
    return found.group(1) if found else "?"


def companions_of(json_path: Path) -> list[str]:
    """Files beside a result that share its stem: its Markdown report and plots."""
    stem = json_path.stem
    names = [path.name for path in json_path.parent.iterdir()
             if path.is_file() and path.suffix != ".json" and path.name.startswith((f"{stem}.", f"{stem}-"))]
    return sorted(names, key=lambda name: (not name.endswith(".md"), name))  # the report first, then the plots


def read_record(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Glm4vEdgeError(f"cannot read the result {path}: {error}") from None


def read_entry(path: Path) -> Entry:
    record = read_record(path)
    kind = kind_of(record)
    try:
        what = kind.describe(record)
    except (KeyError, TypeError, AttributeError):  # the kind's keys are there but not in the expected shape
        what = describe_other(record)
    return Entry(path.name, kind, record_date(path.stem, record), machine_name(record), name_stem(path.stem, record),
                 what, companions_of(path))


def mark_superseded(entries: list[Entry], notes: dict[str, dict] | None = None) -> None:
    """Each entry is superseded by the newest entry of its kind and name stem with a later date,
    or by what ``notes`` (``superseded.json``) names for it."""
    newest: dict[tuple[str, str], Entry] = {}
    for entry in sorted(entries, key=lambda entry: (entry.date, entry.file)):
        newest[(entry.kind.name, entry.name_stem)] = entry
    files = {entry.file for entry in entries}
    for entry in entries:
        latest = newest[(entry.kind.name, entry.name_stem)]
        entry.superseded_by = latest.file if latest.date > entry.date else None
        if note := (notes or {}).get(entry.file):
            if note.get("by") not in files:
                raise Glm4vEdgeError(f"{SUPERSEDED_NAME}: {entry.file} is superseded by {note.get('by')!r}, "
                                     "which is not a result here")
            entry.superseded_by, entry.why = note["by"], note.get("why")


def superseded_notes(folder: Path) -> dict[str, dict]:
    path = folder / SUPERSEDED_NAME
    return read_record(path) if path.is_file() else {}


def index_entries(folder: Path) -> list[Entry]:
    """Every result JSON of a folder, sorted by kind (``KINDS`` order), name stem and date."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Glm4vEdgeError(f"no results folder at {folder}")
    entries = [read_entry(path) for path in sorted(folder.glob("*.json")) if path.name != SUPERSEDED_NAME]
    mark_superseded(entries, superseded_notes(folder))
    order = {kind.name: number for number, kind in enumerate([*KINDS, OTHER])}
    return sorted(entries, key=lambda entry: (order[entry.kind.name], entry.name_stem, entry.date, entry.file))


def _link(name: str) -> str:
    return f"[{name}]({quote(name)})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _companion_links(entry: Entry) -> str:
    # shown by what follows the stem: "md", "latency.png"
    stem = Path(entry.file).stem
    return " · ".join(f"[{name[len(stem) + 1:]}]({quote(name)})" for name in entry.companions) or "–"


def _row(entry: Entry) -> str:
    superseded = _link(entry.superseded_by) if entry.superseded_by else "current"
    if entry.why:
        superseded += f" ({entry.why})"
    cells = [_link(entry.file), entry.date, entry.machine, entry.what, _companion_links(entry), superseded]
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


HEADER = """# Results

Generated by `glm4v-edge bench index` from the result JSON files in this folder; do not edit it by
hand: run the command again after adding a result (`glm4v-edge bench index --check` and the test
suite fail while this page is out of date).

- **Kind**: a record's kind is its `kind` field (the `glm4v-edge bench` command that wrote it), else
  the first kind below whose keys it holds; each kind's writer is named in its section. A record
  of no known kind is listed under *other*, with its top-level keys.
- **Companions**: the other files whose name starts with the JSON's name (without `.json`): its
  Markdown report and plots.
- **Superseded by**: results of the same kind whose file names are equal once the machine and
  the date are removed are repeats of one measurement; each is superseded by the newest of them
  with a later date, and the newest is *current*. A result replaced by one of another name (a
  changed method, not a repeat) is named in `superseded.json`, with why.
"""

TABLE_HEAD = ["| file | date | machine | what it measured | companions | superseded by |",
              "|---|---|---|---|---|---|"]


def _section(kind: Kind, entries: list[Entry]) -> list[str]:
    keys = _names(f"`{key}`" for key in sorted(kind.keys))
    keys = f" A record without a `kind` field is of this kind when it holds the keys {keys}." if kind.keys else ""
    return ["", f"## {kind.name}", "", f"Written by {kind.made_by}.{keys}", "", *TABLE_HEAD,
            *(_row(entry) for entry in entries)]


def _other_files(folder: Path, entries: list[Entry]) -> list[str]:
    """Files that belong to no result JSON, so that every file of the folder shows up somewhere."""
    indexed = {INDEX_NAME, SUPERSEDED_NAME, *(entry.file for entry in entries)}
    indexed |= {name for entry in entries for name in entry.companions}
    others = sorted(path.name for path in folder.iterdir()
                    if path.is_file() and not path.name.startswith(".") and path.name not in indexed)
    return ["", "## Files without a result JSON", "", *(f"- {_link(name)}" for name in others)] if others else []


def render_index(folder: str | Path) -> str:
    """The index page of a results folder; the same folder always gives the same text."""
    folder = Path(folder)
    entries = index_entries(folder)
    lines = [HEADER.rstrip("\n")]
    for kind in [*KINDS, OTHER]:
        of_kind = [entry for entry in entries if entry.kind is kind]
        if of_kind:
            lines += _section(kind, of_kind)
    lines += _other_files(folder, entries)
    return "\n".join(lines) + "\n"


def write_index(folder: str | Path) -> Path:
    path = Path(folder) / INDEX_NAME
    atomic_write_text(path, render_index(folder))
    return path


def check_index(folder: str | Path) -> None:
    """Raise if the folder's README.md is missing or differs from what ``write_index`` would write."""
    path = Path(folder) / INDEX_NAME
    expected = render_index(folder)
    if not path.is_file():
        raise Glm4vEdgeError(f"{path} is missing: run `glm4v-edge bench index --results {folder}`")
    if path.read_text() != expected:
        raise Glm4vEdgeError(f"{path} is out of date: run `glm4v-edge bench index --results {folder}`")
