"""Training throughput: this framework against transformers.Trainer and the classic hand-written loop.

    python benchmarks/throughput.py --model DIR --data DIR [--samples 512] [--batch-size 32] [--device cpu] [--repeat 3]

Each loop trains the same model class on the same first N train pairs with the same batch size,
learning rate and seed, in a fresh child process, one after another; each reports training
samples/s (training steps only: no loading, no evaluation) and its process's peak memory.
--compile compiles the model in this framework and in the Trainer (torch_compile); --also-compiled
runs every loop eager, then compiled. --pooling auto trains AutoModelForSequenceClassification in
every loop (any architecture with that head). --eval also scores this framework and the Trainer on the
dev split (--dev N: its first N pairs) after training, untimed. Exits 1 when a loop failed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LOOPS = {
    "afqmc": "this framework (length-grouped batches, tokenized once)",
    "trainer_pad128": "Trainer, run_glue default (pad to max_length)",
    "trainer_grouped": "Trainer, dynamic padding + group_by_length",
    "classic": "classic loop (dynamic padding, random batches)",
}


def run_ours(args, out_dir: str) -> dict:
    from hydra import compose, initialize_config_dir

    import afqmc

    overrides = [
        f"dataset.root={args.data}",
        f"model.checkpoint={args.model}",
        f"model.pretrained={str(args.pretrained).lower()}",
        f"model.pooling={args.pooling}",
        f"dataset.max_train_samples={args.samples}",
        f"dataset.max_eval_samples={(args.dev or 'null') if args.eval else 64}",
        f"dataset.max_length={args.max_length}",
        f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.seed={args.seed}",
        "trainer.predict=false",
        f"trainer.device={args.device}",
        f"trainer.precision={'bf16' if args.bf16 else 'fp32'}",
        f"trainer.compile={str(args.compile).lower()}",
        f"optimizer.lr={args.lr}",
        *args.set,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    afqmc.train(cfg, out_dir)
    summary = json.loads((Path(out_dir) / "summary.json").read_text())
    result = {"samples": summary["train"]["samples"], "seconds": summary["train"]["seconds"]}
    if args.eval:
        result["dev"] = {k: v for k, v in summary["dev"].items() if k != "loss"}
    return result


def child(args) -> None:
    from benchmarks import peers

    with tempfile.TemporaryDirectory() as tmp:
        if args.one == "afqmc":
            result = run_ours(args, tmp)
        elif args.one == "classic":
            result = peers.classic_loop(args)
        else:
            result = peers.hf_trainer(args, tmp, pad_to_max=args.one == "trainer_pad128")
    if args.device.startswith("cuda"):
        import torch

        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (config, tokenizer; weights unless --random)")
    ap.add_argument("--data", required=True, help="directory with train.json (and dev.json)")
    ap.add_argument("--samples", type=int, default=512, help="first N train pairs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in every loop that has it")
    ap.add_argument("--compile", action="store_true", help="torch.compile in this framework and the Trainer")
    ap.add_argument("--also-compiled", action="store_true", help="each loop eager, then compiled (after all eager)")
    ap.add_argument(
        "--random", dest="pretrained", action="store_false", help="random weights from the config (speed only)"
    )
    ap.add_argument(
        "--pooling", default="cls", choices=["cls", "mean", "auto"], help="auto: AutoModelForSequenceClassification"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for this framework's run (repeatable), e.g. trainer.fast_dropout=false",
    )
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all loops; the medians are compared")
    ap.add_argument("--loops", default=",".join(LOOPS), help=f"comma-separated subset of {','.join(LOOPS)}")
    ap.add_argument("--eval", action="store_true", help="also score afqmc and the Trainers on dev (untimed)")
    ap.add_argument("--dev", type=int, default=None, help="with --eval: the first N dev pairs (default: all)")
    ap.add_argument("--one", choices=list(LOOPS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return child(args)
    # a run is (loop, compiled); --also-compiled: every loop eager first, then every loop compiled
    modes = [False, True] if args.also_compiled else [args.compile]
    runs = {(name, compiled): [] for compiled in modes for name in args.loops.split(",")}
    failed = False
    for round_ in range(args.repeat):  # rounds interleave the loops: a slow spell of a shared machine hits all of them
        for (name, compiled), results in runs.items():
            argv = [a for a in sys.argv[1:] if a != "--compile"] + (["--compile"] if compiled else [])
            cmd = [sys.executable, __file__, "--one", name, *argv]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{label(name, compiled)} failed:\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
                failed = True
                continue
            results.append(r := json.loads(line[-1][7:]))
            r["sps"] = r["samples"] / r["seconds"]
            dev = "".join(f"  dev {k} {r['dev'][k]:.4f}" for k in ("accuracy", "f1_macro")) if "dev" in r else ""
            print(
                f"{label(name, compiled):24s} {r['sps']:8.1f} samples/s  peak {r['peak_mib']:8.0f} MiB{dev}  "
                f"({LOOPS[name]}{', compiled' if compiled else ''}, round {round_ + 1})",
                flush=True,
            )
    for compiled in modes:
        sps = {
            name: statistics.median(r["sps"] for r in res) for (name, c), res in runs.items() if c == compiled and res
        }
        if args.repeat > 1:
            print(
                f"\nmedian of {args.repeat} rounds{', compiled' if compiled else ''}: "
                + ", ".join(f"{name} {v:.1f}" for name, v in sps.items())
            )
        if "afqmc" in sps:
            print(
                f"afqmc speed-up{' (compiled)' if compiled else ''}: "
                + ", ".join(f"{sps['afqmc'] / v:.2f}x {name}" for name, v in sps.items() if name != "afqmc")
            )
    sys.exit(1 if failed else 0)


def label(name: str, compiled: bool) -> str:
    return name + ("+compile" if compiled else "")


if __name__ == "__main__":
    main()
