"""Score a finished run's checkpoint on a labelled split.

    python -m afqmc.evaluate RUN [--checkpoint best|last] [--split dev|test] [key=value ...]

The config is the run's own (RUN/.hydra/config.yaml) with the overrides given, e.g. another
dataset.root, or another corpus's dataset.format, dataset.columns.* and dataset.label_map; it is
checked as training checks it. The split is scored by the run's trainer (its evaluate()), the metrics
printed and written, with the checkpoint and the overrides that differ from the run, to
RUN/eval/<split>_<time>.json. A test split is scored when its lines have labels.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from afqmc.config.identity import config_snapshot
from afqmc.errors import AfqmcError, ConfigError, ModelLoadError
from afqmc.files import recover, write_json
from afqmc.runs.records import CONFIG
from afqmc.runs.trackers import log_evaluation
from afqmc.training.checkpoint import BEST, LAST, MANIFEST

log = logging.getLogger("afqmc.evaluate")
CHECKPOINTS = {"best": BEST, "last": LAST}
GROUPS = ("dataset", "model", "optimizer", "scheduler", "trainer")


def compose_run(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The run's config with `overrides` applied by Hydra, as run.py would apply them."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import CompactHydraException

    from afqmc.config.schema import compose_error

    config = run_dir / CONFIG
    if not config.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no .hydra/config.yaml")
    for override in overrides:
        if override.partition("=")[0].lstrip("+~") in GROUPS:  # the saved config has no groups to choose from
            raise ConfigError(
                f"{override}: afqmc.evaluate overrides keys of the run's config (e.g. dataset.root=DIR), "
                "not a whole config group"
            )
    try:
        with initialize_config_dir(config_dir=str(config.parent.resolve()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except CompactHydraException as e:
        raise ConfigError(compose_error(e)) from None


def changed_keys(run: DictConfig, now: DictConfig) -> dict:
    """{key: {"run": value, "now": value}} for each key whose value the overrides changed."""
    before, after = config_snapshot(run), config_snapshot(now)
    keys = sorted(before.keys() | after.keys())
    return {k: {"run": before.get(k), "now": after.get(k)} for k in keys if before.get(k) != after.get(k)}


def evaluate_run(run_dir: Path, which: str = "best", split: str = "dev", overrides: list[str] = ()) -> Path:
    """Scores RUN/checkpoints/<which> on `split`; returns the JSON file written into RUN/eval/."""
    from afqmc.config.registry import TRAINERS
    from afqmc.config.schema import check_config

    run_dir = Path(run_dir)
    cfg = compose_run(run_dir, list(overrides))
    changed = changed_keys(compose_run(run_dir, []), cfg)
    model_keys = [k for k in changed if k.startswith("model.")]
    if model_keys:  # the checkpoint is the model: a model key given would be recorded, not applied
        raise ConfigError(
            f"{model_keys[0]}={changed[model_keys[0]]['now']!r}: afqmc.evaluate scores the run's checkpoint as it "
            "was trained; model.* cannot be changed (train a run with it instead)"
        )
    path = run_dir / CHECKPOINTS[which]
    recover(path)  # put back a copy a kill left aside mid-swap
    if not any((path / name).is_file() for name in (MANIFEST, "config.json")):  # (config.json: written before it)
        kept = " (a completed run keeps it only with trainer.keep_last=always)" if which == "last" else ""
        raise ModelLoadError(f"{path}: no checkpoint there: the run saved none{kept}, or it was moved")
    if not cfg.dataset.splits.get(split):
        raise ConfigError(f"dataset.splits.{split} is null: no {split} split to score; set it to the file's name")
    if "checkpoint" in cfg.model:
        cfg.model.checkpoint = str(path)  # what is scored: dataset.max_length is checked against it
    check_config(cfg)
    trainer = TRAINERS.get(cfg.trainer.name)(cfg, run_dir)
    trainer.setup_evaluation(path, split)
    metrics = trainer.evaluate(split, show=True)
    out = _free(run_dir / "eval" / f"{split}_{time.strftime('%Y-%m-%d_%H-%M-%S')}.json")
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "split": split,
        "file": str(Path(cfg.dataset.get("root", ".")) / cfg.dataset.splits[split]),
        "checkpoint": str(path.resolve()),
        "metrics": metrics,
        "overrides": changed,
    }
    write_json(out, record)
    log_evaluation(cfg, run_dir, which, split, metrics)  # the run's trackers get them too
    for name, value in metrics.items():
        print(f"{name} {value:.4f}")
    return out


def _free(path: Path) -> Path:
    """`path`, or path_2, path_3 ... when an evaluation in the same second took it."""
    n, free = 1, path
    while free.exists():
        n += 1
        free = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return free


def _one_line(e: Exception, run_dir: Path) -> str:
    from afqmc.config.schema import startup_error

    if isinstance(e, UnicodeDecodeError):
        return f"ConfigError: {run_dir / CONFIG}: not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, OSError) and e.filename:
        return f"{type(e).__name__}: {e.filename}: {e.strerror or e}"
    return startup_error(e)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m afqmc.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", type=Path, help="a run directory (holding .hydra/ and checkpoints/)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the run's config")
    ap.add_argument("--checkpoint", choices=tuple(CHECKPOINTS), default="best")
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        out = evaluate_run(args.run, args.checkpoint, args.split, args.overrides)
    except AfqmcError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)  # one line, as run.py: the message says what to fix
        return 1
    except (OSError, UnicodeDecodeError, OmegaConfBaseException, yaml.YAMLError) as e:
        print(_one_line(e, args.run), file=sys.stderr)  # a record that cannot be read, a directory not written
        return 1
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
