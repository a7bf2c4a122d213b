"""Time from `python run.py ...` to the end of the first training step, the model already on disk.

    python benchmarks/startup.py --model DIR --data DIR [--repeat 3] [--device cpu]

Each repeat launches run.py with the default config in a fresh process (imports, config checks,
model loading, reading and tokenizing train, dev and test, one optimizer step), reads the wall-clock
time of the first record in its metrics.jsonl, and stops the run there. Also prints where the time
went, from the run's log.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable,
                str(ROOT / "run.py"),
                f"dataset.root={args.data}",
                f"model.checkpoint={args.model}",
                "trainer.log_every=1",
                f"trainer.device={args.device}",
                f"hydra.run.dir={out}",
            ]
            start = time.time()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            metrics = Path(out) / "metrics.jsonl"
            while not (metrics.exists() and metrics.read_text().count("\n")):
                if proc.poll() is not None:
                    sys.exit(
                        f"run.py exited with {proc.returncode} before its first step:\n{proc.stderr.read()[-3000:]}"
                    )
                time.sleep(0.05)
            proc.kill()
            proc.wait()
            first = json.loads(metrics.read_text().splitlines()[0])
            print(f"run {i + 1}: first training step done {first['time'] - start:.1f} s after launch")
            for line in (Path(out) / "run.log").read_text().splitlines():  # the log's own timestamps
                if m := re.match(r"\[([\d-]+ [\d:,]+)\]\[[\w.]+\]\[\w+\] - (.*)", line):
                    at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - start
                    print(f"  {at:5.1f} s  {m[2][:100]}")


if __name__ == "__main__":
    main()
