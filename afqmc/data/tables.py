"""Columnar sources, as the Hugging Face ecosystem hands data out: a parquet file (dataset.format=parquet,
read with pyarrow), and a `datasets` split (dataset.format=hf): a folder written by save_to_disk, or a Hub
dataset's name, loaded by the `datasets` library (the optional extra `.[hf]`) through its cache.

Their rows become the same records as a text file's lines (afqmc/data/reading.py), so the same checks and
messages apply, each naming its file (or folder, or Hub split) and row number, 1-based. A ClassLabel column
(the `datasets` way of storing labels as integers) gives its label names, which dataset.label_map maps.
Nothing is held whole: parquet is read in batches of rows, a `datasets` split is memory-mapped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from afqmc.errors import ConfigError, DataError, first_line
from afqmc.files import sha256

TABLE_FORMATS = ("parquet", "hf")
BATCH_ROWS = 1024  # rows read at a time: memory stays flat whatever the file's size


class Row(int):
    """A row number that reads as one in messages: `train.parquet:row 5: missing field 'q1'`."""

    def __str__(self) -> str:
        return f"row {int(self)}"

    def __format__(self, spec: str) -> str:  # (f-strings would format it as the int it is)
        return str(self)


@dataclass(frozen=True)
class HubSplit:
    """A `datasets` split: `root`, a save_to_disk folder or a Hub name, and its split (a folder of `root`, or the
    Hub dataset's split name). Stands where a text split has its file's path."""

    root: str
    split: str
    subset: str | None = None  # the Hub dataset's configuration (clue: afqmc, tnews, ...)

    def __str__(self) -> str:
        return f"{self.root}[{self.split}]" if self.subset is None else f"{self.root}/{self.subset}[{self.split}]"

    def files(self) -> list[str]:
        return sorted(f["filename"] for f in self.load().cache_files)

    def load(self):
        """The `datasets.Dataset`, memory-mapped from its Arrow files: loaded at each use (in milliseconds), so
        that data written again between two runs of one process are read again."""
        return _load(self)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "dataset.format=hf needs the datasets package, which is not installed: pip install -e '.[hf]'"
        ) from None
    datasets.disable_progress_bars()  # the run's log says what is loaded
    return datasets


def _load(source: HubSplit):
    datasets = _datasets()
    folder = Path(source.root)
    if folder.is_dir():
        split_dir = folder / source.split
        if not split_dir.is_dir():
            listed = folder / "dataset_dict.json"
            splits = json.loads(listed.read_text()).get("splits") if listed.is_file() else None
            raise DataError(
                f"{folder}: no split folder {source.split!r} (splits: {', '.join(splits or []) or 'none'}); "
                "dataset.splits names the folders save_to_disk wrote"
            )
        try:
            return datasets.load_from_disk(str(split_dir))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f"{split_dir}: not a dataset written by save_to_disk ({first_line(e)})") from None
    if source.root.startswith((".", "/", "~")) or source.root.count("/") > 1:
        raise DataError(f"dataset.root={source.root}: no such folder (dataset.format=hf: a save_to_disk folder)")
    from huggingface_hub import constants

    from afqmc.models.components import _hub_reachable

    offline = not _hub_reachable()  # else datasets retries for half a minute before it fails
    try:  # offline: from the datasets cache (HF_HOME, HF_DATASETS_CACHE: as the user set them)
        with mock.patch.object(constants, "HF_HUB_OFFLINE", offline or constants.HF_HUB_OFFLINE):
            with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", offline or datasets.config.HF_HUB_OFFLINE):
                return datasets.load_dataset(source.root, source.subset, split=source.split)
    except Exception as e:  # noqa: BLE001  (the Hub, the cache, a missing split: datasets raises many kinds)
        where = "not in the datasets cache, and the Hub cannot be reached" if offline else "not loaded"
        raise DataError(
            f"dataset.root={source.root} (dataset.subset={source.subset}, split {source.split!r}): {where} "
            f"({type(e).__name__}: {first_line(e)}); a folder written by save_to_disk works offline"
        ) from None


def table_rows(source, needed: tuple, fmt: str) -> Iterator[tuple[Row, dict | DataError]]:
    """(row number, record) for each row of a parquet file or a `datasets` split; ClassLabel integers as names.
    A configured column the table lacks stops the run, as a CSV header without it does."""
    if fmt == "parquet":
        yield from _parquet_rows(Path(source), needed)
    else:
        yield from _hf_rows(source, needed)


def _parquet_rows(path: Path, needed: tuple) -> Iterator[tuple[Row, dict | DataError]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a parquet file ({first_line(e)})") from None
    names = table.schema_arrow.names
    _has_columns(path, names, needed)
    labels = _class_labels(table.schema_arrow.metadata)
    n = 0
    try:
        for batch in table.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                n += 1
                yield Row(n), _named(row, labels)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}:{Row(n + 1)}: unreadable from here on ({first_line(e)})") from None


def _hf_rows(source: HubSplit, needed: tuple) -> Iterator[tuple[Row, dict | DataError]]:
    data = source.load()
    _has_columns(source, data.column_names, needed)
    labels = {name: f.names for name, f in data.features.items() if type(f).__name__ == "ClassLabel"}
    n = 0
    for batch in data.iter(batch_size=BATCH_ROWS):
        for row in (dict(zip(batch, values)) for values in zip(*batch.values())):
            n += 1
            yield Row(n), _named(row, labels)


def _has_columns(source, names: list[str], needed: tuple) -> None:
    missing = [c for c in needed if c not in names]
    if missing:
        raise DataError(f"{source}: no column {missing[0]!r} (columns: {', '.join(names)})")


def _class_labels(metadata: dict | None) -> dict[str, list[str]]:
    """{column: label names} of the ClassLabel columns a parquet file written by `datasets` declares."""
    try:
        features = json.loads((metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError, TypeError):
        return {}
    return {k: f["names"] for k, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"}


def _named(row: dict, labels: dict[str, list[str]]) -> dict:
    """ClassLabel integers as their names; -1 (datasets' "no label") as none."""
    for column, names in labels.items():
        value = row.get(column)
        if isinstance(value, int) and not isinstance(value, bool):
            row[column] = names[value] if 0 <= value < len(names) else None if value == -1 else value
    return row


def source_sha256(source) -> str:
    """The sha256 of a split's file, or of a `datasets` split's Arrow files in order: a resume on other data is
    refused."""
    return sha256(*(source.files() if isinstance(source, HubSplit) else [source]))
