"""hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml): Hydra's submitit launcher, plus what a sweep on a shared
cluster needs.

Preemption and time limits. Slurm ends a job with SIGTERM (preemption, scancel, scontrol requeue, the time limit),
and warns it with SIGUSR2 before the time limit, as the launcher asks (sbatch --signal=USR2@signal_delay_s). On either,
the trainer saves checkpoints/last at the next step boundary and stops (afqmc/training/trainer.py), and run.py exits
with 128 + the signal's number. After SIGUSR2 the job hands over to submitit, which requeues it (at most max_num_timeout
times). After SIGTERM it only exits: Slurm requeues a preempted or requeued job itself, and ends the others. A job
that runs again (SLURM_RESTART_COUNT > 0) runs with trainer.resume=true: it goes on from its checkpoints/last.

Failures. Hydra's launcher waits for the jobs' results one by one and raises at the first failed one, while the
others still run. This one waits for every job, then names each failed one, with its directory and error, in one
SweepError.

Hydra finds it as hydra_plugins/afqmc_launcher and imports it with its other plugins on every run: keep the imports
light (submitit loads in launch() and in the jobs). submitit unpickles it in each job.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf, open_dict

from afqmc.errors import CheckpointError, SweepError, error_line, first_line
from afqmc.runs.records import OVERRIDES, find_runs, job_identity, load_run, read_overrides

log = logging.getLogger(__name__)

# run.py's exit codes that this launcher acts on (see run.py and afqmc/errors.py Interrupted)
FAILED = 1  # the run failed; its summary.json says why
TIME_LIMIT_WARNING = 128 + signal.SIGUSR2  # stopped by the warning before the time limit, checkpoints/last saved


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    # ---------------------------------------------------------------- in each job, on its node
    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        """Runs one job, as Hydra's launcher does, with trainer.resume=true once Slurm has requeued it."""
        import submitit

        Singleton.set_state(singleton_state)
        setup_globals()
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.id = submitit.JobEnvironment().job_id
            cfg.hydra.job.num = job_num
        if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
            # Set in the config, not added to the overrides: the run's recorded overrides (.hydra/overrides.yaml,
            # which the report groups runs by) stay those the sweep gave it.
            OmegaConf.update(cfg, "trainer.resume", True, force_add=True)  # (a trainer's YAML may lack it)
        try:
            return run_job(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=cfg,
                job_dir_key=job_dir_key,
                job_subdir_key="hydra.sweep.subdir",
            )
        except SystemExit as e:
            return self._exited(e, Path(cfg.hydra.runtime.output_dir))

    def _exited(self, e: SystemExit, run_dir: Path) -> JobReturn:
        """A failed run returns a result, so that the sweep need not ask Slurm how the job ended (sacct, which some
        clusters lack); a stopped one leaves none, so that the sweep waits for it to run again."""
        from submitit.core.utils import UncompletedJobError

        error = load_run(run_dir).error
        if e.code == TIME_LIMIT_WARNING:
            try:  # submitit's handler for the signal (trainer.py put it back): requeue, and exit
                signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)
            except UncompletedJobError as out:  # out of requeues
                return failed(f"{error} ({out} See hydra.launcher.max_num_timeout.)")
        if e.code != FAILED:
            raise e  # SIGTERM: Slurm runs the job again (preemption, scontrol requeue) or has ended it (scancel)
        return failed(error)

    # ---------------------------------------------------------------- in the sweep, on the submitting machine
    def launch(self, job_overrides, initial_job_idx) -> list[JobReturn]:
        """Submits the jobs as one array, waits for all of them, and raises a SweepError naming the failed ones."""
        jobs = self._submit(job_overrides, initial_job_idx)
        returns, failures = [], []
        for num, (overrides, job) in enumerate(zip(job_overrides, jobs), start=initial_job_idx):
            ret, why = outcome(job)
            returns.append(ret)
            if why:
                failures.append((num, list(overrides), why))
        if failures:
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            raise SweepError(
                f"{len(failures)} of {len(jobs)} jobs failed: {'; '.join(named(sweep_dir, *f) for f in failures)}. "
                f"The report in {sweep_dir} lists every job"
            )
        return returns

    def _submit(self, job_overrides, initial_job_idx) -> list:
        """Hydra's launch() up to the submission: the executor, its parameters, one array task per job."""
        import submitit

        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        base = set(OmegaConf.structured(submitit_launcher.BaseQueueConf).keys())
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in self.params.items() if k not in init_keys}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
        args = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            args.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        return executor.map_array(self, *zip(*args))


def outcome(job) -> tuple[JobReturn, str | None]:
    """A job's result once it is done, and what went wrong (None: nothing)."""
    from submitit.core.utils import UncompletedJobError

    try:
        ret = job.results()[0]
    except UncompletedJobError as e:  # no result: Slurm ended the job (scancel, memory, time limit), or it
        # crashed outside the run; submitit says which where sacct works
        return failed(str(e)), f"no result from Slurm job {job.job_id}: {first_line(e)}"
    if ret.status == JobStatus.COMPLETED:
        return ret, None
    value = ret._return_value  # (the property raises it)
    return ret, str(value) if isinstance(value, SweepError) else error_line(value)


def named(sweep_dir: Path, num: int, overrides: list[str], why: str) -> str:
    """'job N (its directory): why', with what the run recorded where the job did not say it."""
    identity = job_identity(overrides)
    for run_dir in find_runs(sweep_dir):
        try:
            if run_dir != sweep_dir and job_identity(read_overrides(run_dir / OVERRIDES)) == identity:
                break
        except CheckpointError:
            continue  # an unreadable record is no job's
    else:
        return f"job {num} ({' '.join(overrides)}): {why}"
    recorded = load_run(run_dir).error  # what the report says of it
    return f"job {num} ({run_dir}): {why if recorded in why else f'{recorded} ({why})'}"


def failed(why: str) -> JobReturn:
    """The result of a job that failed: `why` is what the sweep says of it."""
    ret = JobReturn(status=JobStatus.FAILED)
    ret.return_value = SweepError(why)
    return ret
