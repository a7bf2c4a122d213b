"""afqmc: config-driven fine-tuning of Chinese BERT models for sentence-pair classification."""

import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

ASSETS = Path(__file__).parent / "assets"
# Weight loading/saving progress bars would interleave with the training log; the run log says it all.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# One id per process (or per torchrun job, whose ranks share AFQMC_RUN_ID), so that run directories
# of runs started in the same second differ, while every access in one process sees the same value.
RUN_ID = os.environ.get("AFQMC_RUN_ID") or secrets.token_hex(3)

# Registered at import so that both run.py and tests composing the configs can resolve them.
OmegaConf.register_new_resolver("afqmc.run_id", lambda: RUN_ID, replace=True)
OmegaConf.register_new_resolver("afqmc.asset", lambda name: str(ASSETS / name), replace=True)


def train(cfg, output_dir) -> float:
    """The one way a run starts (run.py, the tests, the benchmarks): check the config, build the trainer
    it names, fit. Returns the best dev value of trainer.metric."""
    from .registry import TRAINERS
    from .schema import check_config

    check_config(cfg)  # every key's type and range, before any data or model is loaded
    try:
        return TRAINERS.get(cfg.trainer.name)(cfg, output_dir).fit()
    finally:
        from .distributed import shutdown

        shutdown()  # a torchrun run leaves its process group destroyed
