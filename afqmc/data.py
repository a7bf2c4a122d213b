"""Sentence-pair data: readers for JSON lines / CSV / TSV, the datasets, the collate function.

One dataset YAML describes a corpus (format, file names, column names, label map), so another
sentence-pair corpus needs no code. Every bad line stops the run with its file and line number.
"""
from __future__ import annotations

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
from itertools import islice
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .errors import ConfigError, DataError
from .registry import COLLATORS, DATASETS
from .schema import Key

log = logging.getLogger(__name__)
FORMATS = {"jsonl": None, "csv": ",", "tsv": "\t"}  # format -> delimiter


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """(line number, raw record) for each non-blank line. utf-8-sig drops a BOM; CRLF is read as LF."""
    if fmt not in FORMATS:
        raise ConfigError(f"dataset.format={fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    with open(path, encoding="utf-8-sig", newline="" if FORMATS[fmt] else None) as f:
        if FORMATS[fmt]:
            reader = csv.DictReader(f, delimiter=FORMATS[fmt])
            for row in reader:
                yield reader.line_num, row
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_examples(path: Path, cfg, labeled: bool) -> Iterator[dict]:
    """Examples {text_a, text_b, label, id} from one split file; label is the class index or None."""
    cols, label_map = cfg.columns, {str(k): v for k, v in cfg.label_map.items()}
    for n, (lineno, row) in enumerate(_rows(path, cfg.format)):
        where = f"{path}:{lineno}"
        texts = []
        for field in (cols.text_a, cols.text_b):
            text = row.get(field)
            if text is None:
                raise DataError(f"{where}: missing field {field!r} (fields present: {', '.join(map(str, row))})")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: field {field!r} must be a non-empty string, got {text!r}")
            texts.append(text)
        label = None
        if labeled:
            if row.get(cols.label) is None:
                raise DataError(f"{where}: missing field {cols.label!r} (labels are required in this split)")
            raw = str(row[cols.label]).strip()
            if raw not in label_map:
                raise DataError(f"{where}: label {raw!r} is not in dataset.label_map (allowed: {', '.join(label_map)})")
            label = label_map[raw]
        yield {"text_a": texts[0], "text_b": texts[1], "label": label, "id": row.get(cols.id, n)}


class PairDataset(Dataset):
    """A whole split in memory (map-style): random access, so it can be shuffled and sorted."""

    def __init__(self, examples: list[dict], path: Path):
        if not examples:
            raise DataError(f"{path}: no examples (the file is empty)")
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return {**self.examples[i], "index": i}


class StreamingPairDataset(IterableDataset):
    """Reads the file lazily on every pass: memory stays flat whatever the corpus size.

    Batches come in file order (no shuffling), and DataLoader workers split the lines between them.
    """

    def __init__(self, path: Path, cfg, labeled: bool, limit: int | None):
        self.path, self.cfg, self.labeled, self.limit = path, cfg, labeled, limit

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        stream = islice(read_examples(self.path, self.cfg, self.labeled), self.limit)
        for i, example in enumerate(stream):
            if worker is None or i % worker.num_workers == worker.id:
                yield {**example, "index": i}


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
    "task": Key(str, rule=_file_name_part, says="a name without '/', '\\' or '..' (it names predictions/<task>_predict.json)"),
    "root": Key(str),
    "format": Key(str, choices=tuple(FORMATS)),
    "splits": Key(dict, keys={"train": Key(str), "dev": Key(str), "test": Key(str, null=True)}),
    "columns": Key(dict, keys={"text_a": Key(str), "text_b": Key(str), "label": Key(str), "id": Key(str, null=True)}),
    "label_map": Key(dict, rule=_class_indices,
                     says="a map from raw label to class index, with at least 2 labels and the indices 0..N-1 each once"),
    # [CLS] a [SEP] b [SEP] takes 3; below that the tokenizer silently stops truncating
    "max_length": Key(int, min=5),
    "streaming": Key(bool),
    "max_train_samples": Key(int, null=True, min=1),
    "max_eval_samples": Key(int, null=True, min=1),
    "collate": Key(str),
    "download": Key(dict, null=True, keys={"url": Key(str), "sha256": Key(
        dict, null=True, rule=lambda m: all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in m.values()),
        says="null or a map from file name to its sha256 (64 lower-case hex digits)")}),
}


@DATASETS.register("sentence_pairs", schema=DATASET_KEYS)
def build_dataset(cfg, split: str) -> Dataset:
    """cfg is the `dataset` group; split is train, dev or test (test needs no labels)."""
    path = split_path(cfg, split)
    if not path.is_file():
        raise DataError(f"{path}: split file {split!r} not found (dataset.root={cfg.root}, dataset.splits.{split})")
    limit = {"train": cfg.max_train_samples, "dev": cfg.max_eval_samples}.get(split)
    if split == "train" and cfg.streaming:
        return StreamingPairDataset(path, cfg, labeled=True, limit=limit)
    return PairDataset(list(islice(read_examples(path, cfg, labeled=split != "test"), limit)), path)


class PairCollator:
    """Tokenizes a batch as sentence pairs, padded to the batch's longest pair (dynamic padding)."""

    def __init__(self, tokenizer, max_length: int, pad_to_multiple_of: int | None = None):
        self.tokenizer, self.max_length, self.pad_to_multiple_of = tokenizer, max_length, pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            [e["text_a"] for e in examples],
            [e["text_b"] for e in examples],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors="pt",
        )
        batch = dict(batch)  # input_ids, attention_mask and, if the tokenizer has them, token_type_ids
        batch["index"] = torch.tensor([e["index"] for e in examples])
        if examples[0]["label"] is not None:
            batch["labels"] = torch.tensor([e["label"] for e in examples])
        return batch


@COLLATORS.register("pair_tokenize")
def build_collator(cfg, tokenizer, pad_to_multiple_of: int | None = None) -> PairCollator:
    return PairCollator(tokenizer, cfg.max_length, pad_to_multiple_of)


def ensure_downloaded(cfg) -> None:
    """Fetch the corpus zip when a split file is missing, checking each file's sha256."""
    root = Path(cfg.root)
    missing = [name for name in cfg.splits.values() if name and not (root / name).is_file()]
    if not missing or not cfg.download:
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
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".{name}.part"
            tmp.write_bytes(data)
            tmp.replace(root / name)  # a complete file or none
