"""Entry point: python run.py [overrides]. See README.md and conf/config.yaml."""

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

import afqmc  # (importing it registers the config resolvers)
from afqmc.errors import AfqmcError, Interrupted
from afqmc.runs import write_failed_summary

log = logging.getLogger("afqmc")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Trains one run; returns its best dev metric so that Hydra sweepers can optimize it."""
    output_dir = HydraConfig.get().runtime.output_dir
    try:
        return afqmc.train(cfg, output_dir)
    except Exception as e:
        interrupted = isinstance(e, Interrupted)
        if RANK == "0":  # so that the sweep report lists this run as failed (or interrupted), and why
            write_failed_summary(output_dir, e, "interrupted" if interrupted else "failed")
        if not isinstance(e, AfqmcError):
            raise
        log.error("%s: %s", type(e).__name__, e)  # the message says what to fix; a traceback would bury it
        sys.exit(130 if interrupted else 1)  # 130: the shell's code for a Ctrl-C


RANK = os.environ.get("RANK", "0")  # set by torchrun


def cli() -> None:
    """main(), with Hydra's own composition errors (a misspelt key or option) made one line too.

    Hydra prints those as a block of lines; with HYDRA_FULL_ERROR set it raises them instead.
    A user who sets HYDRA_FULL_ERROR gets Hydra's full error, as Hydra documents.
    """
    users_choice = "HYDRA_FULL_ERROR" in os.environ
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except CompactHydraException as e:
        if users_choice:
            raise
        from afqmc.schema import compose_error

        print(f"ConfigError: {compose_error(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
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
