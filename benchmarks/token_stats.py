"""Token lengths of a corpus's sentence pairs under a tokenizer: the figures benchmarks/RESULTS.md quotes.

    python benchmarks/token_stats.py --model DIR --data DIR [--split train]

Each pair is encoded as the framework encodes it ([CLS] a [SEP] b [SEP], no truncation).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a directory holding the tokenizer files")
    ap.add_argument("--data", required=True, help="a directory holding the AFQMC split files")
    ap.add_argument("--split", default="train")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    import afqmc  # noqa: F401  (the config's resolvers)
    from afqmc.data.components import build_dataset
    from afqmc.models.components import load_tokenizer

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset.root={args.data}", "dataset.download=null"])
    ds = build_dataset(cfg.dataset, args.split)
    tok = load_tokenizer(args.model, do_lower_case=True)
    lengths = sorted(
        len(ids) for ids in tok([e["text_a"] for e in ds.examples], [e["text_b"] for e in ds.examples])["input_ids"]
    )
    p99 = lengths[int(0.99 * (len(lengths) - 1))]
    print(
        f"{args.model}: {len(lengths)} {args.split} pairs, tokens: mean {statistics.mean(lengths):.1f}, "
        f"median {statistics.median(lengths):.0f}, 99th percentile {p99}, max {lengths[-1]}"
    )


if __name__ == "__main__":
    main()
