"""Classify sentence pairs with a saved checkpoint.

    python -m afqmc.predict CHECKPOINT_DIR "句子一" "句子二"
    python -m afqmc.predict CHECKPOINT_DIR "一句话"            # a single-sentence model (e.g. TNEWS)
    python -m afqmc.predict CHECKPOINT_DIR --file pairs.jsonl [--output out.jsonl]

--file reads JSON lines with sentence1/sentence2 (other names: --text-a/--text-b; --single: text_a
alone) and writes one {"id", "label", "probability"} per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .checkpoint import load_model, write_text
from .data import read_examples
from .errors import AfqmcError
from .model import load_tokenizer


class Predictor:
    def __init__(self, checkpoint: str | Path, max_length: int = 128, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_model(Path(checkpoint)).to(self.device)
        self.tokenizer = load_tokenizer(str(checkpoint))
        self.max_length = max_length

    @torch.inference_mode()
    def __call__(self, texts: list[tuple[str, ...]], batch_size: int = 64) -> list[tuple[str, float]]:
        """(label, probability of that label) for each pair, or each 1-tuple of a single-sentence model."""
        out = []
        for i in range(0, len(texts), batch_size):
            a, *b = (list(column) for column in zip(*texts[i : i + batch_size]))
            batch = self.tokenizer(
                a, b[0] if b else None, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            probs = self.model(**batch.to(self.device)).logits.float().softmax(-1)
            p, idx = probs.max(-1)
            out += [(self.model.config.id2label[j], q) for j, q in zip(idx.tolist(), p.tolist())]
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m afqmc.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", help="a checkpoints/best directory of a run")
    ap.add_argument("pair", nargs="*", help="sentence1 sentence2, or one sentence for a single-sentence model")
    ap.add_argument("--file", help="JSON lines of pairs to classify")
    ap.add_argument("--output", help="where --file's predictions go (default: standard output)")
    ap.add_argument("--text-a", default="sentence1")
    ap.add_argument("--text-b", default="sentence2")
    ap.add_argument("--single", action="store_true", help="--file has one text per line (--text-a)")
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args(argv)
    if bool(args.file) == bool(args.pair) or len(args.pair) > 2:
        ap.error("give either one or two sentences, or --file FILE")
    try:
        predictor = Predictor(args.checkpoint, args.max_length)
        if args.pair:
            label, prob = predictor([tuple(args.pair)])[0]
            print(f"label {label} probability {prob:.4f}")
            return 0
        text_b = None if args.single else args.text_b
        cfg = OmegaConf.create({"format": "jsonl", "columns": {"text_a": args.text_a, "text_b": text_b, "id": "id"}})
        examples = list(read_examples(Path(args.file), cfg, labeled=False))
        results = predictor([(e["text_a"],) if args.single else (e["text_a"], e["text_b"]) for e in examples])
        text = "".join(
            json.dumps({"id": e["id"], "label": label, "probability": round(prob, 6)}, ensure_ascii=False) + "\n"
            for e, (label, prob) in zip(examples, results)
        )
        if args.output:
            write_text(Path(args.output), text)
        else:
            sys.stdout.write(text)
        return 0
    except (AfqmcError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
