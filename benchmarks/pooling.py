"""model.pooling compared: a short fine-tuning run of each pooling on the same pairs, per seed.

    python benchmarks/pooling.py --model DIR --data DIR [--train 6000] [--dev 2000] [--seeds 1 2] [--lr 1e-4]
    python benchmarks/pooling.py --score-only --out DIR   # the table again, from runs already there

Each run is `python run.py` in a process of its own with one thread, the three poolings of a seed side by
side. The table gives each run's dev metrics (summary.json) and the ROC AUC of its best checkpoint's
probability of label 1 on the same dev pairs: a short run often predicts the majority class at argmax,
where accuracy and macro-F1 say nothing and the AUC and the loss still rank the models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
POOLINGS = ("cls", "mean", "pooler")


def train(args, seed: int) -> None:
    runs = []
    for pooling in POOLINGS:
        out = args.out / f"{pooling}_{seed}"
        if (out / "summary.json").is_file():
            continue
        overrides = [
            f"dataset.root={args.data}",
            f"model.checkpoint={args.model}",
            f"model.pooling={pooling}",
            f"trainer.seed={seed}",
            f"dataset.max_train_samples={args.train}",
            f"dataset.max_eval_samples={args.dev}",
            "trainer.epochs=1",
            f"optimizer.lr={args.lr}",
            "trainer.predict=false",
            "trainer.save_every_steps=null",
            "trainer.cpu_threads=1",
            f"hydra.run.dir={out}",
        ]
        log = open(args.out / f"{pooling}_{seed}.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        runs.append(
            subprocess.Popen([sys.executable, str(ROOT / "run.py"), *overrides], stdout=log, stderr=log, env=env)
        )
    for run in runs:
        run.wait()


def roc_auc(scores, labels) -> float:
    """The probability that a random positive pair scores above a random negative one (Mann-Whitney)."""
    import torch

    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    return ((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)).item()


def score(run: Path) -> dict:
    """summary.json's dev metrics and the AUC of checkpoints/best on the dev pairs the run scored."""
    import torch
    from omegaconf import OmegaConf

    from afqmc.data.components import split_path
    from afqmc.data.reading import read_examples
    from afqmc.predict import Predictor

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml").dataset
    examples = list(islice(read_examples(split_path(cfg, "dev"), cfg, labeled=True), cfg.max_eval_samples))
    logits = Predictor(run / "checkpoints" / "best", device="cpu").logits(
        [(e["text_a"], e["text_b"]) for e in examples]
    )
    labels = torch.tensor([e["label"] for e in examples])
    dev = json.loads((run / "summary.json").read_text())["dev"]
    return {**dev, "auc": roc_auc(logits.softmax(-1)[:, 1], labels)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a BERT checkpoint directory")
    ap.add_argument("--data", help="a directory holding AFQMC's train.json and dev.json")
    ap.add_argument("--train", type=int, default=6000, help="the first N train pairs")
    ap.add_argument("--dev", type=int, default=2000, help="the first N dev pairs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "pooling")
    ap.add_argument("--score-only", action="store_true", help="score the runs in --out without training")
    args = ap.parse_args()
    if not args.score_only:
        args.out.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            train(args, seed)
    print("| pooling | seed | dev accuracy | macro-F1 | F1 of label 1 | dev loss | AUC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in sorted(p for p in args.out.iterdir() if (p / "summary.json").is_file()):
        pooling, seed = run.name.rsplit("_", 1)
        m = score(run)
        print(
            f"| {pooling} | {seed} | {m['accuracy']:.4f} | {m['f1_macro']:.4f} | {m['f1_pos']:.4f} | {m['loss']:.4f} "
            f"| {m['auc']:.4f} |"
        )


if __name__ == "__main__":
    main()
