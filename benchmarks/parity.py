"""Accuracy parity: this framework and transformers.Trainer train the same model with the same
hyper-parameters on the full train split; both are scored on the full dev split.

    python benchmarks/parity.py --model DIR --data DIR [--epochs 1] [--lr 5e-5] [--pooling mean]

Takes tens of minutes per loop on a CPU: run it in the background.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pooling", default="mean", choices=["cls", "mean"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="run directory for this framework's run (default: a temp dir)")
    ap.add_argument(
        "--only",
        choices=["afqmc", "trainer"],
        help="run one side (run both sides at once, each with OMP_NUM_THREADS=1)",
    )
    args = ap.parse_args()
    args.samples, args.pretrained, args.bf16, args.eval = None, True, False, True
    if args.only != "trainer":
        run_ours(args)
    if args.only != "afqmc":
        run_trainer(args)


def run_ours(args) -> None:
    out = args.out or tempfile.mkdtemp(prefix="parity-")
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        f"dataset.root={args.data}",
        f"model.checkpoint={args.model}",
        f"model.pooling={args.pooling}",
        f"optimizer.lr={args.lr}",
        f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"dataset.max_length={args.max_length}",
        f"trainer.seed={args.seed}",
        f"trainer.device={args.device}",
        "trainer.predict=false",
        f"hydra.run.dir={out}",
    ]
    print("afqmc:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    ours = json.loads((Path(out) / "summary.json").read_text())
    print(
        "afqmc  dev", json.dumps(ours["dev"]), f"train {ours['train']['samples_per_second']:.1f} samples/s", flush=True
    )


def run_trainer(args) -> None:
    from benchmarks.peers import hf_trainer

    with tempfile.TemporaryDirectory() as tmp:
        theirs = hf_trainer(args, tmp, pad_to_max=False)
    print(
        "Trainer dev",
        json.dumps(theirs["dev"]),
        f"train {theirs['samples'] / theirs['seconds']:.1f} samples/s",
        flush=True,
    )


if __name__ == "__main__":
    main()
