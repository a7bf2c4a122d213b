"""Entry point: python run.py [overrides]. See README.md, docs/ and conf/config.yaml."""

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
from afqmc.runs.records import (
    LOCK,
    OVERRIDES,
    discard,
    hydra_quoted,
    resume_argv,
    unparsable,
    write_failed_summary,
    write_record,
)

log = logging.getLogger("afqmc")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Trains one run; returns its best dev metric so that Hydra sweepers can optimize it."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return afqmc.train(cfg, output_dir)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0" and not (output_dir / LOCK).exists():
            discard(output_dir)  # Ctrl-C before the run claimed its directory: nothing of it stays
        raise
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
    except KeyboardInterrupt:  # before the run claimed its directory (after, afqmc.train makes it an Interrupted)
        if users_choice:
            raise
        print("Interrupted: Ctrl-C (SIGINT) before the run started; nothing was written", file=sys.stderr)
        sys.exit(130)
    except (UnicodeDecodeError, ValueError) as e:
        line = _before_the_run(e)
        if users_choice or line is None:
            raise  # a bug's: its traceback
        print(line, file=sys.stderr)
        sys.exit(1)


def _before_the_run(e: Exception) -> str | None:
    """One line for what Hydra raises before the run starts as a UnicodeDecodeError or a ValueError (a config
    file that is not UTF-8, a config group given null, a log file that cannot be opened); None for any other."""
    from afqmc.config.schema import startup_error

    if isinstance(e, UnicodeDecodeError):
        tb, name = e.__traceback__, "a config file"
        while tb is not None:  # the file Hydra was reading: a local of the innermost frame that has one
            name = next(
                (f.name for f in tb.tb_frame.f_locals.values() if hasattr(f, "read") and hasattr(f, "name")), name
            )
            tb = tb.tb_next
        where = f"byte {e.object[e.start]:#04x} at byte {e.start + 1}"
        return f"ConfigError: {name}: not UTF-8 text ({where}); save it as UTF-8"
    if str(e).startswith("Config group override must be a string or a list"):  # logger=null
        given = next((a for a in sys.argv[1:] if a.endswith("=null")), "GROUP=null")
        group = given.partition("=")[0].lstrip("+~")
        return f"ConfigError: {given}: a config group takes an option or a list of options; {group}=[] chooses none"
    if isinstance(e.__cause__, OSError):  # Hydra's log file handler: RUN/run.log cannot be opened
        return startup_error(e.__cause__)
    return None


if __name__ == "__main__":
    sys.argv, quoted = hydra_quoted(sys.argv)  # dataset.root=/data/中文: quoted, as Hydra's grammar needs
    for override in quoted:
        print(f"run.py: quoted for Hydra (non-ASCII values need quotes in its grammar): {override}", file=sys.stderr)
    if problem := unparsable(sys.argv):  # Hydra's own message does not say which override
        sys.exit(f"ConfigError: {problem}")
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
