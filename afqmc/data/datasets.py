"""The torch side of afqmc/data/reading.py: datasets over the examples it reads, and the collate function.

Each dataset offers what the trainer asks of one (afqmc/config/registry.py, SplitData): its size, its
examples' lengths, encode(), whether it streams, an example's id, and the lines it left out.
An example's text_b is None in a single-sentence task (dataset.columns.text_b=null): one text is tokenized.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from afqmc.data.reading import SkippedLines, read_examples
from afqmc.data.tables import source_sha256

# (the texts, the tokenizer, max_length) -> token ids: a sweep's jobs, which Hydra runs one after another in
# one process, tokenize each split once. Keyed by the texts themselves, not by the file they came from: the
# reading settings (columns, quoting, header, ...) decide which texts a file gives.
_ENCODED: dict[tuple, list[dict]] = {}


def _texts_digest(examples: list[dict]) -> str:
    """sha256 of every example's text_a and text_b, None told apart from '' (about 10 ms for AFQMC's train)."""
    digest = hashlib.sha256()
    for e in examples:
        for text in (e["text_a"], e["text_b"]):
            digest.update(b"\x00N" if text is None else b"\x00S" + text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _tokenizer_key(tokenizer) -> tuple:
    """What a tokenizer's output depends on: its class, its settings and its vocabulary."""
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    settings = repr(sorted((k, repr(v)) for k, v in tokenizer.init_kwargs.items()))
    return type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer), vocab, settings


UNKNOWN_WARN = 0.03  # a larger share of [UNK] among a train split's tokens is warned of (the trainer)


def unknown_share(features: list[dict], tokenizer) -> float | None:
    """The share of the unknown token among a split's encoded tokens, special tokens left out (None: the
    tokenizer has no unknown token, or the split no token)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return None
    special = set(tokenizer.all_special_ids) - {unk}
    total = unknown = 0
    for f in features:
        ids = [t for t in f["input_ids"] if t not in special]
        total += len(ids)
        unknown += ids.count(unk)
    return unknown / total if total else None


def texts(examples: list[dict]) -> tuple[list[str], list[str] | None]:
    """The tokenizer's text and text_pair: no pair in a single-sentence task, whose text_b is None."""
    first = [e["text_a"] for e in examples]
    return first, None if examples[0]["text_b"] is None else [e["text_b"] for e in examples]


class SplitFile:
    """What both datasets share: the split file they read, and its fingerprint."""

    path: Path

    def fingerprint(self) -> dict:
        return {"file": str(self.path), "examples": self.count(), "sha256": source_sha256(self.path)}


class PairDataset(SplitFile, Dataset):
    """A whole split in memory (map-style): random access, so it can be shuffled and sorted.

    encode() tokenizes the split once, up front; batches then only pad (see PairCollator).
    """

    streaming = False

    def __init__(self, examples: list[dict], path: Path, skipped_lines: int = 0, no_gold_label: int = 0):
        self.examples, self.path, self.features = examples, path, None
        self.skipped_lines, self.no_gold_label = skipped_lines, no_gold_label

    def count(self) -> int:
        return len(self.examples)

    def item_id(self, index: int):
        return self.examples[index]["id"]

    def encode(self, tokenizer, max_length: int) -> None:
        key = (_texts_digest(self.examples), *_tokenizer_key(tokenizer), max_length)
        if key not in _ENCODED:
            enc = tokenizer(*texts(self.examples), truncation=True, max_length=max_length)
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


class StreamingPairDataset(SplitFile, IterableDataset):
    """Reads the file lazily on every pass: memory stays flat whatever the corpus size.

    Batches come in file order (no shuffling), and DataLoader workers split the lines between them.
    """

    streaming = True

    def __init__(
        self, path: Path, cfg, labeled: bool, limit: int | None, skipped_lines: int = 0, no_gold_label: int = 0
    ):
        self.path, self.cfg, self.labeled, self.limit = path, cfg, labeled, limit
        self.skipped_lines, self.no_gold_label = skipped_lines, no_gold_label

    def count(self) -> int:
        """One pass over the file (it has no len()): the LR schedule needs the number of steps. It counts
        the lines left out too, which the first look at the file may have stopped short of."""
        left_out = SkippedLines()
        n = sum(1 for _ in islice(read_examples(self.path, self.cfg, self.labeled, left_out), self.limit))
        self.skipped_lines, self.no_gold_label = left_out.count, left_out.no_gold_label
        return n

    def encode(self, tokenizer, max_length: int) -> None:
        """Nothing to do: the collate function tokenizes each batch as it comes."""

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        stream = islice(read_examples(self.path, self.cfg, self.labeled), self.limit)
        for i, example in enumerate(stream):
            if worker is None or i % worker.num_workers == worker.id:
                yield {**example, "index": i}


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
            batch = dict(
                self.tokenizer(  # input_ids, attention_mask and, if the tokenizer has them, token_type_ids
                    *texts(examples),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    pad_to_multiple_of=self.pad_to_multiple_of,
                    return_tensors="pt",
                )
            )
        batch["index"] = torch.tensor([e["index"] for e in examples])
        if examples[0]["label"] is not None:
            batch["labels"] = torch.tensor([e["label"] for e in examples])
        return batch

    def _pad(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(examples), width), self.tokenizer.pad_token_id),
            "attention_mask": torch.zeros(len(examples), width, dtype=torch.long),
        }
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = torch.zeros(len(examples), width, dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            batch["attention_mask"][i, :n] = 1
            for name in ("input_ids", "token_type_ids"):
                if name in batch:
                    batch[name][i, :n] = torch.tensor(e[name])
        return batch
