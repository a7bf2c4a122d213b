"""Classify sentence pairs (or single sentences) with a saved checkpoint.

    python -m afqmc.predict CHECKPOINT_DIR "句子一" "句子二"
    python -m afqmc.predict CHECKPOINT_DIR "一句话"            # a single-sentence model (e.g. TNEWS)
    python -m afqmc.predict CHECKPOINT_DIR --file pairs.tsv [--output out.jsonl] [--format tsv] [--text-a q1 ...]

--file reads any format training reads (jsonl, csv, tsv) with the run's own dataset settings, saved
in the checkpoint (run_config.yaml): format, header, columns, max_length; the flags override them
(--single: text_a alone). It writes one {"id", "label", "probability"} per line (JSON lines), and when
the file has labels it prints the metrics too (on standard error when the predictions go to standard
output).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from afqmc.config.plugins import load_plugins
from afqmc.data.reading import FORMATS, has_labels, read_examples
from afqmc.errors import AfqmcError, CheckpointError, ConfigError, DataError
from afqmc.files import write_text
from afqmc.models.components import max_positions
from afqmc.runs.card import load_run_config
from afqmc.training.checkpoint import BEST, MANIFEST, label_names, load_model, load_tokenizer
from afqmc.training.evaluator import Evaluator
from afqmc.training.metrics import scores

# Checkpoints written before they carried their run's config were AFQMC runs with these settings.
AFQMC_DATASET = {
    "format": "jsonl",
    "columns": {"text_a": "sentence1", "text_b": "sentence2", "label": "label", "id": "id"},
    "max_length": 128,
}
SHOW_FROM = 10  # batches: progress is shown for files at least this long


def checkpoint_dir(given: str | Path) -> Path:
    """The checkpoint a path names: a checkpoint directory, or a run directory's checkpoints/best."""
    path = Path(given)
    if not (path / MANIFEST).is_file() and (path / BEST / MANIFEST).is_file():
        return path / BEST  # a run directory
    if not path.is_dir() or not any((path / name).is_file() for name in (MANIFEST, "config.json")):
        what = "missing" if not path.exists() else "not a directory" if not path.is_dir() else "not a checkpoint"
        raise CheckpointError(
            f"{path}: {what}; expected a checkpoint directory (a run's checkpoints/best), or a run directory "
            "holding one"
        )
    return path


class Predictor:
    def __init__(self, checkpoint: str | Path, max_length: int | None = None, device: str | None = None):
        path = checkpoint_dir(checkpoint)
        run = load_run_config(path)
        load_plugins((run.get("plugins") if run is not None else None) or [])  # the modules that registered its model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_model(path).to(self.device)
        self.labels = label_names(path, self.model)  # the raw label of each class
        self.tokenizer = load_tokenizer(path, self.model)
        self.dataset = run.dataset if run is not None else OmegaConf.create(AFQMC_DATASET)  # the run's settings
        self.max_length = max_length or self.dataset.max_length
        config = getattr(self.model, "config", None)  # (a model that is not a transformers one may have none)
        limit = max_positions(config.to_dict()) if hasattr(config, "to_dict") else None
        if limit is not None and self.max_length > limit:  # past it: an index error in a long batch
            raise ConfigError(
                f"--max-length {self.max_length} is invalid; expected at most {limit}, the model's positions"
            )
        # sentences per example: a pair model's, or one for a single-sentence model (None: a dataset of its own)
        columns = self.dataset.get("columns")
        self.texts_per_example = None if columns is None else 1 if columns.get("text_b") is None else 2
        self.evaluator = Evaluator(self.model, self.device)

    def check_texts(self, texts: list[tuple[str, ...]]) -> None:
        """A pair model given one sentence (or a single-sentence model two) would answer, and wrongly."""
        wanted = self.texts_per_example
        given = {len(t) for t in texts}
        if wanted is not None and given - {wanted}:
            kind = "a sentence-pair model: give two sentences" if wanted == 2 else "a single-sentence model: give one"
            raise ConfigError(f"{len(next(t for t in texts if len(t) != wanted))} sentence(s) given to {kind}")

    def logits(self, texts: list[tuple[str, ...]], batch_size: int = 64, show: bool = False) -> torch.Tensor:
        """The model's logits for each pair (or 1-tuple of a single-sentence model), in order. Texts of
        similar length are batched together: little padding, so a large file goes several times faster."""
        self.check_texts(texts)
        order = sorted(range(len(texts)), key=lambda i: -sum(map(len, texts[i])))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        show = show and len(batches) >= SHOW_FROM  # a few batches are done before a bar would say anything
        desc = "predicting" if show else None
        _, logits, _ = self.evaluator.forward_all(self._encoded(texts, batches), len(batches), desc)
        return logits

    def _encoded(self, texts: list[tuple[str, ...]], batches: list[list[int]]):
        for batch in batches:
            a, *b = (list(column) for column in zip(*(texts[i] for i in batch)))
            enc = self.tokenizer(
                a, b[0] if b else None, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            yield {**enc, "index": torch.tensor(batch)}

    def __call__(self, texts: list[tuple[str, ...]], batch_size: int = 64) -> list[tuple[str, float]]:
        """(label, probability of that label) for each pair, or each 1-tuple of a single-sentence model."""
        p, idx = self.logits(texts, batch_size).softmax(-1).max(-1)
        return [(self.labels[j], q) for j, q in zip(idx.tolist(), p.tolist())]


FILE_FORMATS = {".json": "jsonl", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def file_config(predictor: Predictor, args) -> DictConfig:
    """How to read --file: the run's dataset settings, the flags over them, the model's labels."""
    # a copy; a dataset that is not afqmc's (a plugin's) has no columns or format: AFQMC's, or the flags
    cfg = OmegaConf.merge(predictor.dataset if "columns" in predictor.dataset else AFQMC_DATASET, {})
    if args.format:
        cfg.format = args.format
    if cfg.format == "hf":  # the run read a datasets split; --file is a file: its format by its name
        cfg.format = FILE_FORMATS.get(Path(args.file).suffix.lower(), "jsonl")
    positions = cfg.format != "jsonl" and not cfg.get("header", True)  # columns are 0-based positions
    flags = {"text_a": args.text_a, "text_b": args.text_b, "label": args.label, "id": args.id}
    cfg.columns.update({k: int(v) if positions and v.isdigit() else v for k, v in flags.items() if v is not None})
    if args.single:
        cfg.columns.text_b = None
    # the raw label of each class, as the model was trained with it
    cfg.label_map = {name: i for i, name in enumerate(predictor.labels)}
    return cfg


def predict_file(predictor: Predictor, args) -> dict | None:
    """Writes the predictions of --file; returns the metrics when the file has labels."""
    path, cfg = Path(args.file), file_config(predictor, args)
    if not path.is_file():
        raise OSError(f"{path}: no such file")
    labeled = has_labels(path, cfg)
    examples = list(read_examples(path, cfg, labeled=labeled))
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty or blank); expected one example a line")
    texts = [(e["text_a"],) if e["text_b"] is None else (e["text_a"], e["text_b"]) for e in examples]
    logits = predictor.logits(texts, args.batch_size, show=True)
    p, idx = logits.softmax(-1).max(-1)
    text = "".join(
        json.dumps({"id": e["id"], "label": predictor.labels[j], "probability": round(q, 6)}, ensure_ascii=False) + "\n"
        for e, j, q in zip(examples, idx.tolist(), p.tolist())
    )
    if args.output:
        write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    if not labeled:
        return None
    return scores(logits, torch.tensor([e["label"] for e in examples]))


def positive(text: str) -> int:
    """An argparse type: an integer >= 1 (a batch of -1 answered from uninitialised memory)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; expected an integer >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m afqmc.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", help="a checkpoints/best directory of a run, or the run directory")
    ap.add_argument("pair", nargs="*", help="sentence1 sentence2, or one sentence for a single-sentence model")
    ap.add_argument("--file", help="a file of pairs to classify (JSON lines, CSV or TSV)")
    ap.add_argument("--output", help="where --file's predictions go (default: standard output)")
    ap.add_argument("--format", choices=[f for f in FORMATS if f != "hf"], help="--file's format (default: the run's)")
    for column in ("text_a", "text_b", "label", "id"):
        ap.add_argument(f"--{column.replace('_', '-')}", help=f"--file's {column} column (default: the run's)")
    ap.add_argument("--single", action="store_true", help="--file has one text per line (--text-a)")
    ap.add_argument("--max-length", type=positive, help="tokens per pair (default: the run's dataset.max_length)")
    ap.add_argument("--batch-size", type=positive, default=64)
    args = ap.parse_args(argv)
    if bool(args.file) == bool(args.pair) or len(args.pair) > 2:
        ap.error("give either one or two sentences, or --file FILE")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        predictor = Predictor(args.checkpoint, args.max_length)
        if args.pair:
            label, prob = predictor([tuple(args.pair)])[0]
            print(f"label {label} probability {prob:.4f}")
            return 0
        metrics = predict_file(predictor, args)
        if metrics is not None:
            where = sys.stdout if args.output else sys.stderr  # standard output may be the predictions
            print(" ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=where)
        return 0
    except (AfqmcError, OSError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)  # one line, as run.py prints it
        return 1


if __name__ == "__main__":
    sys.exit(main())
