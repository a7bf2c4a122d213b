"""afqmc: config-driven fine-tuning of Chinese BERT models for sentence-pair classification."""

import contextlib
import logging
import os
import secrets
import sys
from pathlib import Path

from omegaconf import OmegaConf

from afqmc import errors
from afqmc.config import help as cli_help
from afqmc.runs import records as runs

log = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"
# Weight loading/saving progress bars would interleave with the training log; the run log says it all.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# One id per process (or per torchrun job, whose ranks share AFQMC_RUN_ID), so that run directories
# of runs started in the same second differ, while every access in one process sees the same value.
RUN_ID = os.environ.get("AFQMC_RUN_ID") or secrets.token_hex(3)

# Registered at import so that both run.py and tests composing the configs can resolve them.
OmegaConf.register_new_resolver("afqmc.run_id", lambda: RUN_ID, replace=True)
OmegaConf.register_new_resolver("afqmc.asset", lambda name: str(ASSETS / name), replace=True)
# hydra.sweep.subdir: a job's directory (runs.py)
OmegaConf.register_new_resolver("afqmc.job_subdir", lambda *, _root_: runs.job_subdir(_root_), replace=True)
OmegaConf.register_new_resolver("afqmc.help_keys", lambda: cli_help.help_keys(), replace=True)  # run.py --help


def _sweep_name(default=None):
    """The sweep directory's name in the jobs of a multirun, `default` elsewhere: what groups a sweep's
    runs in a tracker (conf/logger/)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return default


OmegaConf.register_new_resolver("afqmc.sweep_name", _sweep_name, replace=True)


def train(cfg, output_dir) -> float:
    """The one way a run starts (run.py, the tests, the benchmarks): check the config, claim the run
    directory, build the trainer the config names, fit. Returns the best dev value of trainer.metric.
    A run that raises after claiming its directory leaves a summary.json saying why."""
    from afqmc.config.registry import TRAINERS
    from afqmc.config.schema import check_config

    check_config(cfg)  # every key's type and range, before any data or model is loaded
    output_dir = Path(output_dir)
    main = os.environ.get("RANK", "0") == "0"  # several ranks (torchrun, Slurm): rank 0 alone writes the run directory
    with runs.claimed(output_dir, cfg) if main else contextlib.nullcontext():
        if main:
            log.info("run directory: %s", output_dir.resolve())
        trainer = None
        try:  # (the trainer's build too: a Ctrl-C in a run's first seconds leaves a summary like any other)
            trainer = TRAINERS.get(cfg.trainer.name)(cfg, output_dir)
            best = trainer.fit()
            if main:  # the end of a long log says where the results are
                log.info("run directory: %s; %s", output_dir.resolve(), runs.outcome(output_dir))
            return best
        except (Exception, KeyboardInterrupt) as e:
            error = e
            if isinstance(e, KeyboardInterrupt):  # a second Ctrl-C, or one outside the training loop
                error = errors.Interrupted(str(e) or "Ctrl-C (SIGINT) outside the training loop: stopped at once")
            # a resume that fails before it trains (a checkpoint that does not load) leaves the record as it was
            built = trainer is not None and getattr(trainer, "built", True)
            if main and not (OmegaConf.select(cfg, "trainer.resume") and not built):
                status = "interrupted" if isinstance(error, errors.Interrupted) else "failed"
                try:
                    runs.write_failed_summary(output_dir, error, status)
                    log.info("run directory: %s; %s (summary.json says why)", output_dir.resolve(), status)
                except OSError as unwritten:  # a full disk: the error that filled it is the one to raise
                    log.warning("run directory: %s; %s; summary.json not written: %s", output_dir, status, unwritten)
            elif main:
                log.info("run directory: %s; not resumed, left as it was", output_dir.resolve())
            if error is not e:
                raise error from None  # run.py says it in one line, as for a first Ctrl-C
            raise
        finally:  # a torchrun run leaves its process group destroyed (none without the module: a Ctrl-C while
            distributed = sys.modules.get("afqmc.training.distributed")  # torch was imported left it half-made)
            if distributed is not None:
                distributed.shutdown()
