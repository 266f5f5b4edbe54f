"""The package's layers import only downward: a module may import its own unit (package or
module) and the layers below, never above or sideways. Lazy imports inside functions count."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "glm4v_edge"

# Lowest first. A unit is a top-level module or subpackage of glm4v_edge.
LAYERS = [
    ["errors"],
    ["names", "dims", "progress", "files", "thinking", "machine"],  # shared names and helpers
    ["messages", "provenance", "model_card"],
    ["manifest"],
    ["hub"],  # artifacts from the Hugging Face hub
    ["media", "checkpoint", "weights"],
    ["shapes", "openai_format", "local_datasets"],  # the shapes task lives here, not in tiny/
    ["runtime"],
    ["parity"],
    ["export", "quant"],
    ["bench", "demo", "tiny"],
    ["pipeline", "console"],
    ["cli_options"],  # the typer options several commands share
    ["bench_commands"],  # the `bench` group: the comparison and each measurement's command
    ["cli"],
    ["__main__", "__init__"],
]
LAYER_OF = {unit: number for number, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "glm4v_edge" else [f"glm4v_edge.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        units.update(unit_of(name) for name in names if name.startswith("glm4v_edge."))
    return units


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        yield relative, relative.parts[0].removesuffix(".py")


def test_every_unit_has_a_layer():
    assert {unit for _, unit in modules()} <= set(LAYER_OF)


def test_imports_go_down_only():
    wrong = []
    for relative, unit in modules():
        for imported in imported_units(PACKAGE / relative):
            if imported != unit and LAYER_OF[imported] >= LAYER_OF[unit]:
                wrong.append(f"{relative} imports glm4v_edge.{imported}")
    assert not wrong, "\n".join(wrong)


def test_the_issue_contracts():
    """runtime never imports export, quant or demo; parity, export and quant never import tiny."""
    for relative, unit in modules():
        imported = imported_units(PACKAGE / relative)
        if unit == "runtime":
            assert not imported & {"export", "quant", "demo"}, relative
        if unit in ("parity", "export", "quant"):
            assert "tiny" not in imported, relative
