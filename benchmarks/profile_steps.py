"""Where a training step's time goes: torch.profiler around a short run of this framework, the top kernels.

    python benchmarks/profile_steps.py --model DIR --data DIR [--device cuda] [--bf16] [--random] [--steps 20]
        [--max-length 128] [--out FILE]

Runs afqmc.train (the public entry point, so the loop profiled is the one users run) for --steps optimizer
steps on the first steps x batch train pairs, with a 32-pair dev split and no test predictions or checkpoints,
under torch.profiler. Writes the GPU kernels (on the CPU: the operators) that took the most self time, with
their share of it, then the operators' table, to --out (standard output without it). Setup and the small dev
scoring are in the profile too; at these sizes the training steps are most of it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(args, out_dir: str) -> None:
    from hydra import compose, initialize_config_dir

    import afqmc

    overrides = [
        f"dataset.root={args.data}",
        f"model.checkpoint={args.model}",
        f"model.pretrained={str(args.pretrained).lower()}",
        "model.pooling=cls",  # a random encoder has no trained pooler (and cls is what --random benchmarks use)
        f"dataset.max_train_samples={args.steps * args.batch_size}",
        "dataset.max_eval_samples=32",
        f"dataset.max_length={args.max_length}",
        f"trainer.max_steps={args.steps}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.device={args.device}",
        f"trainer.precision={'bf16' if args.bf16 else 'fp32'}",
        f"trainer.compile={str(args.compile).lower()}",
        "trainer.predict=false",
        "trainer.save_best=false",  # no checkpoint writes in the profile
        "trainer.keep_last=never",
        *args.set,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    afqmc.train(cfg, out_dir)


def report(prof, cuda: bool, rows: int) -> str:
    events = prof.key_averages()
    if cuda:  # kernels (and memcpy/memset) are the events that ran on the GPU
        time_of = lambda e: e.self_device_time_total  # noqa: E731
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        title, sort_by = "GPU kernels by self GPU time", "self_device_time_total"
    else:
        time_of = lambda e: e.self_cpu_time_total  # noqa: E731
        kernels = list(events)
        title, sort_by = "operators by self CPU time (no GPU)", "self_cpu_time_total"
    kernels.sort(key=time_of, reverse=True)
    total = sum(time_of(e) for e in kernels) or 1
    lines = [f"{title}: {total / 1e3:.1f} ms in all", f"{'share':>6} {'ms':>9} {'calls':>7}  name"]
    for e in kernels[:rows]:
        lines.append(f"{time_of(e) / total:6.1%} {time_of(e) / 1e3:9.2f} {e.count:7d}  {e.key[:160]}")
    lines += ["", events.table(sort_by=sort_by, row_limit=rows, max_name_column_width=80)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (config, tokenizer; weights unless --random)")
    ap.add_argument("--data", required=True, help="directory with train.json and dev.json")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps profiled")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="trainer.compile=true")
    ap.add_argument("--random", dest="pretrained", action="store_false", help="random weights from the config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another override (repeatable)")
    ap.add_argument("--rows", type=int, default=30, help="rows of each table")
    ap.add_argument("--out", help="file for the tables (default: standard output)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with tempfile.TemporaryDirectory() as tmp, profile(activities=activities) as prof:
        run(args, tmp)
    text = report(prof, cuda, args.rows)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(text.split("\n\n")[0])  # the kernels on the console too; the operators' table in the file
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
