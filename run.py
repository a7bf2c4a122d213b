"""Entry point: python run.py [overrides]. See README.md and conf/config.yaml."""

import logging
import os
import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import afqmc  # (importing it registers the config resolvers)
from afqmc.errors import AfqmcError, Interrupted
from afqmc.runs.records import LOCK, OVERRIDES, discard, resume_argv, write_failed_summary, write_record

log = logging.getLogger("afqmc")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Trains one run; returns its best dev metric so that Hydra sweepers can optimize it."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return afqmc.train(cfg, output_dir)
    except AfqmcError as e:
        log.error("%s: %s", type(e).__name__, e)  # the message says what to fix; a traceback would bury it
        # RANK read now: the Slurm launcher sets it in the job, after this module (pickled whole) was loaded
        if os.environ.get("RANK", "0") == "0" and not (output_dir / LOCK).exists():  # before the run claimed it
            if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep's report shows which job, and why
                if not (output_dir / OVERRIDES).exists():  # (a new job's directory: a recorded one is left as it is)
                    write_record(output_dir, cfg)
                write_failed_summary(output_dir, e)
            else:
                discard(output_dir)  # a bad config leaves no run directory behind
        # as a shell reports a process that a signal ended (130: Ctrl-C, 143: SIGTERM, 140: SIGUSR2)
        sys.exit(128 + e.signum if isinstance(e, Interrupted) else 1)


RANK = os.environ.get("RANK", "0")  # set by torchrun (the Slurm launcher: in the job, see main)


def cli() -> None:
    """main(), with what stops a run before it starts made one line too: Hydra's composition errors (a
    misspelt key or option), a YAML file Hydra cannot read, a run directory that cannot be written.

    Hydra prints its errors as a block of lines; with HYDRA_FULL_ERROR set it raises them instead.
    A user who sets HYDRA_FULL_ERROR gets the full error, as Hydra documents.
    """
    users_choice = "HYDRA_FULL_ERROR" in os.environ
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (AfqmcError, CompactHydraException, yaml.YAMLError, OmegaConfBaseException, OSError) as e:
        if users_choice:
            raise
        from afqmc.config.schema import startup_error

        print(startup_error(e), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    try:  # hydra.run.dir=RUN trainer.resume=true: the run's own overrides (afqmc/runs/records.py)
        sys.argv = resume_argv(sys.argv)
    except AfqmcError as e:
        sys.exit(f"{type(e).__name__}: {e}")
    if RANK != "0":
        # Hydra would give every torchrun rank a run directory of its own. Ranks other than 0 get none
        # and log only warnings: they write nothing, and the trainer hands them rank 0's directory.
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")] + [
            "hydra.run.dir=.",
            "hydra.output_subdir=null",
            "hydra/job_logging=stdout",
            "hydra.job_logging.root.level=WARNING",
        ]
    cli()
