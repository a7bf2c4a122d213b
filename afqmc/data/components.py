"""The dataset group: its keys, checked before anything loads, and the registered dataset and collate
function. torch loads inside the builders (afqmc/data/datasets.py): the config is checked first.
"""

from __future__ import annotations

import logging
import re
from itertools import islice
from pathlib import Path

from omegaconf import OmegaConf

from afqmc.config.registry import COLLATORS, DATASETS
from afqmc.config.schema import Key
from afqmc.data.download import ensure_downloaded
from afqmc.data.reading import FORMATS, QUOTINGS, SkippedLines, read_examples
from afqmc.data.tables import HubSplit
from afqmc.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def split_path(cfg, split: str) -> Path | HubSplit:
    """Where a split is: its file, or with dataset.format=hf a `datasets` split (afqmc/data/tables.py)."""
    if cfg.format == "hf":
        return HubSplit(str(cfg.root), cfg.splits[split], cfg.get("subset"))
    return Path(cfg.root) / cfg.splits[split]


# predictions/<task>_predict.json is written as .<task>_predict.json.tmp first (afqmc/files.py),
# and a file name has at most 255 bytes on Linux, macOS and Windows file systems alike
MAX_TASK_BYTES = 255 - len(".tmp") - len("._predict.json")


def _file_name_part(task: str) -> bool:
    return not any(bad in task for bad in ("/", "\\", "..", "\0")) and len(task.encode("utf-8")) <= MAX_TASK_BYTES


def _class_indices(label_map: dict) -> bool:
    """0..N-1, each once, N >= 2: the head's outputs."""
    values = list(label_map.values())
    return len(values) >= 2 and all(type(v) is int for v in values) and sorted(values) == list(range(len(values)))


def _column(null: bool = False, what: str = "") -> Key:
    """A field name (JSON lines, or CSV/TSV with a header) or a 0-based position (dataset.header=false)."""
    return Key((str, int), null=null, min=0, says=f"{what}a name, or a 0-based position with dataset.header=false")


def _raw_labels(values: list) -> bool:
    return all(isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip() for v in values)


# conf/dataset/afqmc.yaml, checked before anything loads (afqmc/config/schema.py). conf/dataset_defaults/ gives
# a dataset YAML every key but task, root, format, splits, columns and label_map.
DATASET_KEYS = {
    # task names predictions/<task>_predict.json: a separator or '..' would write outside the run directory
    "task": Key(
        str,
        rule=_file_name_part,
        says=f"a name without '/', '\\' or '..', of at most {MAX_TASK_BYTES} bytes in UTF-8 "
        "(it names predictions/<task>_predict.json)",
    ),
    "root": Key(str),
    "format": Key(str, choices=tuple(FORMATS)),
    "subset": Key(str, null=True),  # format hf, a Hub dataset: its configuration
    "header": Key(bool),
    "quoting": Key(str, null=True, choices=QUOTINGS),
    "splits": Key(dict, keys={"train": Key(str), "dev": Key(str, null=True), "test": Key(str, null=True)}),
    "columns": Key(
        dict,
        keys={
            "text_a": _column(),
            "text_b": _column(null=True, what="null (one sentence per line) or "),
            "label": _column(),
            "id": _column(null=True, what="null (lines numbered from 0) or "),
        },
    ),
    "label_map": Key(
        dict,
        rule=_class_indices,
        says="a map from raw label to class index, with at least 2 labels and the indices 0..N-1 each once",
    ),
    "no_gold_label": Key(list, rule=_raw_labels, says="a list of raw label values (e.g. ['-']), or []"),
    # [CLS] a [SEP] b [SEP] takes 3; below that the tokenizer silently stops truncating
    "max_length": Key(int, min=5),
    "streaming": Key(bool),
    "max_train_samples": Key(int, null=True, min=1),
    "max_eval_samples": Key(int, null=True, min=1),
    "max_test_samples": Key(int, null=True, min=1),
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


COLUMN_ORDER = ["text_a", "text_b", "label", "id"]
NAMED_BY = {"jsonl": "JSON lines", "parquet": "parquet files", "hf": "datasets splits"}  # formats that name columns


def check_dataset(cfg) -> None:
    """What the keys cannot say one by one: columns are names or positions as dataset.header says,
    no two the same, and a label is either a class or no gold label, not both."""
    d = cfg.dataset
    labels = OmegaConf.to_container(d.label_map)
    if not _class_indices(labels) and {"0", "1"} < set(map(str, labels)):  # Hydra merged two maps
        raise ConfigError(
            f"dataset.label_map={labels} holds AFQMC's labels '0' and '1' besides its own: a dataset YAML with "
            "`defaults: [afqmc, _self_]` has its label_map merged into AFQMC's; leave that line out "
            "(conf/dataset_defaults/ gives what a corpus leaves out)"
        )
    given = OmegaConf.to_container(d.columns)  # (in reading order: conf/dataset_defaults/ puts id first)
    columns = {k: given[k] for k in sorted(given, key=COLUMN_ORDER.index) if given[k] is not None}
    positions = d.format in ("csv", "tsv") and not d.header
    for key, value in columns.items():
        if positions and not isinstance(value, int):
            raise ConfigError(
                f"dataset.columns.{key}={value!r} is invalid; with dataset.header=false, columns are "
                "0-based positions: expected an integer >= 0"
            )
        if not positions and not isinstance(value, str):
            text = d.format in ("csv", "tsv")
            why = "dataset.header=true names the columns" if text else f"{NAMED_BY[d.format]} name their fields"
            hint = " (a position needs dataset.header=false)" if text else ""
            raise ConfigError(f"dataset.columns.{key}={value} is invalid; {why}: expected a name{hint}")
    seen = {}
    for key, value in columns.items():
        if value in seen:
            raise ConfigError(f"dataset.columns.{key}={value!r} is invalid; dataset.columns.{seen[value]} is it too")
        seen[value] = key
    both = {str(v) for v in d.no_gold_label} & {str(k) for k in d.label_map}
    if both:
        raise ConfigError(
            f"dataset.no_gold_label={list(d.no_gold_label)} is invalid; {sorted(both)[0]!r} is in dataset.label_map too"
        )


@DATASETS.register("sentence_pairs", schema=DATASET_KEYS, check=check_dataset)
def build_dataset(cfg, split: str, labeled: bool | None = None):
    """cfg is the `dataset` group; split is train, dev or test. `labeled`: whether every line must have a
    label (None: all splits but test; afqmc.evaluate scores a labelled test split).

    The dataset's `skipped_lines` counts the bad lines left out under dataset.on_bad_line=skip, its
    `no_gold_label` the lines left out for a label in dataset.no_gold_label.
    """
    from afqmc.data.datasets import PairDataset, StreamingPairDataset

    path = split_path(cfg, split)
    if not isinstance(path, HubSplit):  # (a datasets split comes through datasets' cache; its load says what fails)
        ensure_downloaded(cfg, split)
        if not path.is_file():
            raise DataError(f"{path}: split file {split!r} not found (dataset.root={cfg.root}, dataset.splits.{split})")
    limit = {"train": cfg.max_train_samples, "dev": cfg.max_eval_samples, "test": cfg.max_test_samples}.get(split)
    skipped = SkippedLines()
    labeled = split != "test" if labeled is None else labeled
    examples = islice(read_examples(path, cfg, labeled=labeled, skipped=skipped), limit)
    streaming = split == "train" and cfg.streaming
    if streaming:  # read lazily, once per epoch; now one pass counts skipped lines, or one example shows some
        found = sum(1 for _ in examples) if cfg.on_bad_line == "skip" else next(examples, None) is not None
    else:
        examples = list(examples)
        found = bool(examples)
    if not found:
        raise DataError(f"{path}: no examples ({_none_because(skipped)})")
    if skipped.count:
        log.warning("%s: skipped %d bad lines (dataset.on_bad_line=skip)", path, skipped.count)
    if skipped.no_gold_label:
        log.info("%s: left out %d lines without a gold label (dataset.no_gold_label)", path, skipped.no_gold_label)
    counts = dict(skipped_lines=skipped.count, no_gold_label=skipped.no_gold_label)
    if streaming:
        return StreamingPairDataset(path, cfg, labeled=True, limit=limit, **counts)
    return PairDataset(examples, path, **counts)


def _none_because(skipped: SkippedLines) -> str:
    bad, no_gold = skipped.count, skipped.no_gold_label
    if bad and no_gold:
        return (
            f"of {bad + no_gold} lines with data, {bad} are bad, skipped by dataset.on_bad_line=skip, "
            f"and {no_gold} have no gold label (dataset.no_gold_label)"
        )
    if bad:
        return f"all {bad} lines with data are bad, skipped by dataset.on_bad_line=skip"
    if no_gold:
        return f"all {no_gold} lines with data have no gold label (dataset.no_gold_label)"
    return "the file is empty"


@COLLATORS.register("pair_tokenize")
def build_collator(cfg, tokenizer, pad_to_multiple_of: int | None = None):
    from afqmc.data.datasets import PairCollator

    return PairCollator(tokenizer, cfg.max_length, pad_to_multiple_of)
