"""Hugging Face ``datasets`` on local disk (no hub): calibration data and public benchmarks."""

from __future__ import annotations

from pathlib import Path

from glm4v_edge.errors import Glm4vEdgeError, first_line


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file())


def load_rows(path: Path):
    """The rows of a ``save_to_disk`` folder or of parquet file(s) (first split of a DatasetDict)."""
    import datasets  # a GPTQModel dependency; only needed here

    path = Path(path)
    try:
        if is_saved_dataset(path):
            data = datasets.load_from_disk(str(path))
        else:
            files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
            if not files:
                raise Glm4vEdgeError(f"no parquet files or saved dataset in {path}")
            data = datasets.load_dataset("parquet", data_files=files, split="train")
    except (OSError, ValueError) as error:
        raise Glm4vEdgeError(f"cannot read the dataset at {path}: {first_line(error)}") from None
    if isinstance(data, datasets.DatasetDict):
        data = data[next(iter(data))]
    return data


def first_image_column(data) -> str | None:
    import datasets

    return next((name for name, feature in data.features.items() if isinstance(feature, datasets.Image)), None)
