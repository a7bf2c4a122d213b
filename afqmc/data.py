"""Sentence-pair data: readers for JSON lines / CSV / TSV, the download, the dataset group's keys.

One dataset YAML describes a corpus (format, file names, column names, label map), so another
sentence-pair corpus needs no code. Every bad line stops the run with its file and line number,
or with dataset.on_bad_line=skip is left out, counted and logged. The torch datasets and the
collate function built from what is read here are in afqmc/datasets.py.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from itertools import count, islice
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf

from .checkpoint import atomic_write
from .errors import ConfigError, DataError
from .registry import COLLATORS, DATASETS
from .schema import Key

log = logging.getLogger(__name__)
FORMATS = {"jsonl": None, "csv": ",", "tsv": "\t"}  # format -> delimiter
MAX_LINE_BYTES = 1 << 20  # for configs without dataset.max_line_bytes (afqmc.predict's)


def _lines(path: Path, max_bytes: int) -> Iterator[tuple[int, str | DataError]]:
    """(line number, text) for each line, or a DataError in place of a line too long or not UTF-8.

    Binary readline(max_bytes + 1): a line of several MB is measured in pieces, never held whole.
    A UTF-8 BOM is dropped; the line ending (LF or CRLF) is kept for the csv module.
    """
    with open(path, "rb") as f:
        for lineno in count(1):
            raw = f.readline(max_bytes + 1)
            if not raw:
                return
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                size, raw = len(raw), b""  # let go of the first piece before measuring the rest
                size += _rest_of_line(f)
                yield (
                    lineno,
                    DataError(f"{path}:{lineno}: line of {size:,} bytes, above dataset.max_line_bytes={max_bytes:,}"),
                )
                continue
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    lineno,
                    DataError(
                        f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at byte {e.start + 1} of the line)"
                    ),
                )


def _rest_of_line(f) -> int:
    """Reads past the rest of an over-long line in 64 KB pieces; returns its size in bytes."""
    size = 0
    while chunk := f.readline(1 << 16):
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return size


def _rows(
    path: Path, fmt: str, max_bytes: int = MAX_LINE_BYTES, header: tuple = ()
) -> Iterator[tuple[int, dict | DataError]]:
    """(line number, raw record) for each non-blank line, or a DataError in place of a bad line: the
    caller decides whether it stops the run (dataset.on_bad_line). `header`: columns a CSV/TSV must have."""
    if fmt not in FORMATS:
        raise ConfigError(f"dataset.format={fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    lines = _lines(path, max_bytes)
    if FORMATS[fmt]:
        yield from _csv_rows(path, lines, fmt, header)
        return
    for lineno, text in lines:
        if isinstance(text, DataError):
            yield lineno, text
        elif text.strip():
            yield lineno, _json_object(text, f"{path}:{lineno}")


def _json_object(text: str, where: str) -> dict | DataError:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting deeper than the stack
        return DataError(f"{where}: invalid JSON ({e})")
    if not isinstance(row, dict):
        return DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _csv_rows(path: Path, lines, fmt: str, header: tuple) -> Iterator[tuple[int, dict | DataError]]:
    """The csv module reads the lines (a quoted field may span several); a bad line reaches it as a
    blank line, which it skips, and its error is yielded in its place."""
    bad: list[tuple[int, DataError]] = []
    lineno = 0  # the last line handed to the csv module: the last line of its current record

    def texts():
        nonlocal lineno
        for lineno, text in lines:
            if isinstance(text, DataError):
                bad.append((lineno, text))
                text = "\n"
            yield text

    reader = csv.DictReader(texts(), delimiter=FORMATS[fmt])
    try:
        columns = reader.fieldnames or []
    except csv.Error as e:
        raise DataError(f"{path}:{lineno}: bad {fmt} header ({e})") from None
    if bad:  # the header line itself was too long or not UTF-8
        raise bad[0][1]
    missing = [c for c in header if c not in columns]
    if columns and missing:  # a header problem is no single bad line: it stops the run even with skip
        raise DataError(f"{path}:{lineno}: the header has no column {missing[0]!r} (columns: {', '.join(columns)})")
    while True:
        try:
            row = next(reader, None)
        except csv.Error as e:
            row = DataError(f"{path}:{lineno}: bad {fmt} line ({e})")
        yield from bad
        bad.clear()
        if row is None:
            return
        yield lineno, row


class SkippedLines:
    """Bad lines left out under dataset.on_bad_line=skip: counted, the first few logged with file:line and why."""

    LOG_FIRST = 5

    def __init__(self):
        self.count = 0

    def add(self, error: DataError) -> None:
        self.count += 1
        if self.count <= self.LOG_FIRST:
            log.warning("skipped %s", error)


def read_examples(path: Path, cfg, labeled: bool, skipped: SkippedLines | None = None) -> Iterator[dict]:
    """Examples {text_a, text_b, label, id} from one split file; label is the class index or None.

    A bad line raises its DataError; with dataset.on_bad_line=skip it is left out (and counted in `skipped`).
    """
    # plain Python values: OmegaConf attribute access per line was most of the reading time
    cols = SimpleNamespace(**OmegaConf.to_container(cfg.columns))
    label_map = {str(k): v for k, v in cfg.label_map.items()}
    skip = cfg.get("on_bad_line", "error") == "skip"  # .get: afqmc.predict's config has neither key
    header = (cols.text_a, cols.text_b, cols.label) if labeled else (cols.text_a, cols.text_b)
    for n, (lineno, row) in enumerate(_rows(path, cfg.format, cfg.get("max_line_bytes", MAX_LINE_BYTES), header)):
        try:
            example = _example(row, f"{path}:{lineno}", cols, label_map, labeled, n)
        except DataError as e:
            if not skip:
                raise
            if skipped is not None:
                skipped.add(e)
            continue
        yield example


def _example(row: dict | DataError, where: str, cols, label_map: dict, labeled: bool, n: int) -> dict:
    if isinstance(row, DataError):
        raise row
    texts = []
    for field in (cols.text_a, cols.text_b):
        text = row.get(field)
        if text is None:
            raise DataError(f"{where}: missing field {field!r} (fields present: {', '.join(map(str, row))})")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field {field!r} must be a non-empty string, got {text!r}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape: the tokenizer cannot take it
            raise DataError(f"{where}: field {field!r} has an unpaired surrogate (a bad \\u escape)") from None
        texts.append(text)
    label = None
    if labeled:
        if row.get(cols.label) is None:
            raise DataError(f"{where}: missing field {cols.label!r} (labels are required in this split)")
        raw = str(row[cols.label]).strip()
        if raw not in label_map:
            raise DataError(f"{where}: label {raw!r} is not in dataset.label_map (allowed: {', '.join(label_map)})")
        label = label_map[raw]
    # columns.id=null numbers the lines (row.get(None) would be a CSV row's surplus cells)
    return {"text_a": texts[0], "text_b": texts[1], "label": label, "id": n if cols.id is None else row.get(cols.id, n)}


def split_path(cfg, split: str) -> Path:
    return Path(cfg.root) / cfg.splits[split]


def _file_name_part(task: str) -> bool:
    return not any(bad in task for bad in ("/", "\\", "..", "\0"))


def _class_indices(label_map: dict) -> bool:
    """0..N-1, each once, N >= 2: the head's outputs."""
    values = list(label_map.values())
    return len(values) >= 2 and all(type(v) is int for v in values) and sorted(values) == list(range(len(values)))


DATASET_KEYS = {  # conf/dataset/afqmc.yaml, checked before anything loads (afqmc/schema.py)
    # task names predictions/<task>_predict.json: a separator or '..' would write outside the run directory
    "task": Key(
        str, rule=_file_name_part, says="a name without '/', '\\' or '..' (it names predictions/<task>_predict.json)"
    ),
    "root": Key(str),
    "format": Key(str, choices=tuple(FORMATS)),
    "splits": Key(dict, keys={"train": Key(str), "dev": Key(str), "test": Key(str, null=True)}),
    "columns": Key(dict, keys={"text_a": Key(str), "text_b": Key(str), "label": Key(str), "id": Key(str, null=True)}),
    "label_map": Key(
        dict,
        rule=_class_indices,
        says="a map from raw label to class index, with at least 2 labels and the indices 0..N-1 each once",
    ),
    # [CLS] a [SEP] b [SEP] takes 3; below that the tokenizer silently stops truncating
    "max_length": Key(int, min=5),
    "streaming": Key(bool),
    "max_train_samples": Key(int, null=True, min=1),
    "max_eval_samples": Key(int, null=True, min=1),
    "collate": Key(str),
    "download": Key(
        dict,
        null=True,
        keys={
            "url": Key(str),
            "sha256": Key(
                dict,
                null=True,
                rule=lambda m: all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in m.values()),
                says="null or a map from file name to its sha256 (64 lower-case hex digits)",
            ),
        },
    ),
    "max_line_bytes": Key(int, min=1),
    "on_bad_line": Key(str, choices=("error", "skip")),
}


@DATASETS.register("sentence_pairs", schema=DATASET_KEYS)
def build_dataset(cfg, split: str):
    """cfg is the `dataset` group; split is train, dev or test (test needs no labels).

    The dataset's `skipped_lines` counts the bad lines left out under dataset.on_bad_line=skip.
    """
    from .datasets import PairDataset, StreamingPairDataset

    ensure_downloaded(cfg, split)
    path = split_path(cfg, split)
    if not path.is_file():
        raise DataError(f"{path}: split file {split!r} not found (dataset.root={cfg.root}, dataset.splits.{split})")
    limit = {"train": cfg.max_train_samples, "dev": cfg.max_eval_samples}.get(split)
    skipped = SkippedLines()
    examples = islice(read_examples(path, cfg, labeled=split != "test", skipped=skipped), limit)
    streaming = split == "train" and cfg.streaming
    if streaming:  # read lazily, once per epoch; now one pass counts skipped lines, or one example shows some
        found = sum(1 for _ in examples) if cfg.on_bad_line == "skip" else next(examples, None) is not None
    else:
        examples = list(examples)
        found = bool(examples)
    if not found:
        why = (
            f"all {skipped.count} lines with data are bad, skipped by dataset.on_bad_line=skip"
            if skipped.count
            else "the file is empty"
        )
        raise DataError(f"{path}: no examples ({why})")
    if skipped.count:
        log.warning("%s: skipped %d bad lines (dataset.on_bad_line=skip)", path, skipped.count)
    if streaming:
        return StreamingPairDataset(path, cfg, labeled=True, limit=limit, skipped_lines=skipped.count)
    return PairDataset(examples, path, skipped_lines=skipped.count)


@COLLATORS.register("pair_tokenize")
def build_collator(cfg, tokenizer, pad_to_multiple_of: int | None = None):
    from .datasets import PairCollator

    return PairCollator(tokenizer, cfg.max_length, pad_to_multiple_of)


def ensure_downloaded(cfg, split: str | None = None) -> None:
    """Fetch the corpus zip when the split's file (any split's, with split=None) is missing, and take
    every missing split file from it, checking each file's sha256."""
    root = Path(cfg.root)
    missing = [name for name in cfg.splits.values() if name and not (root / name).is_file()]
    if not missing or not cfg.download or (split is not None and cfg.splits[split] not in missing):
        return
    url = cfg.download.url
    log.info("%s missing in %s; downloading %s", ", ".join(missing), root, url)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "data.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError) as e:
            raise DataError(
                f"could not download {url} ({e}). Put {', '.join(missing)} in {root.resolve()} "
                f"or pass dataset.root=DIR (a directory holding {', '.join(cfg.splits.values())})"
            ) from None
        _extract_checked(archive, missing, root, cfg.download.sha256 or {}, url)


def _extract_checked(archive: Path, names: list[str], root: Path, sha256: dict, url: str) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DataError(f"{url} is not a zip archive") from None
    with zf:
        members = {Path(m).name: m for m in zf.namelist() if not m.endswith("/")}
        for name in names:
            if name not in members:
                raise DataError(f"{url} has no {name} (it has: {', '.join(sorted(members))})")
            data = zf.read(members[name])
            digest = hashlib.sha256(data).hexdigest()
            if name in sha256 and digest != sha256[name]:
                raise DataError(f"{url}: {name} has sha256 {digest}, expected {sha256[name]}; not written")
            with atomic_write(root / name) as tmp:  # a complete file or none
                tmp.write_bytes(data)
