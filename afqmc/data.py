"""Sentence-pair data: readers for JSON lines / CSV / TSV, the datasets, the collate function.

One dataset YAML describes a corpus (format, file names, column names, label map), so another
sentence-pair corpus needs no code. Every bad line stops the run with its file and line number.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
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


# (file, its mtime, example count, tokenizer, max_length) -> token ids: a sweep's jobs, which Hydra
# runs one after another in one process, tokenize each split once.
_ENCODED: dict[tuple, list[dict]] = {}


class PairDataset(Dataset):
    """A whole split in memory (map-style): random access, so it can be shuffled and sorted.

    encode() tokenizes the split once, up front; batches then only pad (see PairCollator).
    """

    def __init__(self, examples: list[dict], path: Path):
        if not examples:
            raise DataError(f"{path}: no examples (the file is empty)")
        self.examples, self.path, self.features = examples, path, None

    def encode(self, tokenizer, max_length: int) -> None:
        key = (str(self.path.resolve()), self.path.stat().st_mtime_ns, len(self.examples), type(tokenizer).__name__,
               tokenizer.name_or_path, len(tokenizer), getattr(tokenizer, "do_lower_case", None), max_length)
        if key not in _ENCODED:
            enc = tokenizer([e["text_a"] for e in self.examples], [e["text_b"] for e in self.examples],
                            truncation=True, max_length=max_length)
            names = [n for n in ("input_ids", "token_type_ids") if n in enc]
            if len(_ENCODED) >= 6:  # a long sweep over tokenizers or lengths must not grow memory without end
                del _ENCODED[next(iter(_ENCODED))]
            _ENCODED[key] = [dict(zip(names, values)) for values in zip(*(enc[n] for n in names))]
        self.features = _ENCODED[key]

    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        features = self.features[i] if self.features is not None else {}
        return {**self.examples[i], **features, "index": i}


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


@DATASETS.register("sentence_pairs")
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
    """A batch of sentence pairs as tensors, padded to its longest pair (dynamic padding).

    Pairs already encoded by PairDataset.encode() are only padded; raw pairs (streaming) are tokenized.
    """

    def __init__(self, tokenizer, max_length: int, pad_to_multiple_of: int | None = None):
        self.tokenizer, self.max_length, self.pad_to_multiple_of = tokenizer, max_length, pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if "input_ids" in examples[0]:
            batch = self._pad(examples)
        else:
            batch = dict(self.tokenizer(  # input_ids, attention_mask and, if the tokenizer has them, token_type_ids
                [e["text_a"] for e in examples],
                [e["text_b"] for e in examples],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                pad_to_multiple_of=self.pad_to_multiple_of,
                return_tensors="pt",
            ))
        batch["index"] = torch.tensor([e["index"] for e in examples])
        if examples[0]["label"] is not None:
            batch["labels"] = torch.tensor([e["label"] for e in examples])
        return batch

    def _pad(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": torch.full((len(examples), width), self.tokenizer.pad_token_id),
                 "attention_mask": torch.zeros(len(examples), width, dtype=torch.long)}
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = torch.zeros(len(examples), width, dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            batch["attention_mask"][i, :n] = 1
            for name in ("input_ids", "token_type_ids"):
                if name in batch:
                    batch[name][i, :n] = torch.tensor(e[name])
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
