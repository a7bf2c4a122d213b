"""hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml): Hydra's submitit launcher, plus what a sweep on a shared
cluster needs.

Preemption and time limits. Slurm ends a job with SIGTERM (preemption, scancel, scontrol requeue, the time limit),
and warns it with SIGUSR2 before the time limit, as the launcher asks (sbatch --signal=USR2@signal_delay_s). On either,
the trainer saves checkpoints/last at the next step boundary and stops (afqmc/training/trainer.py), and run.py exits
with 128 + the signal's number. After SIGUSR2 the job hands over to submitit, which requeues it (at most max_num_timeout
times). After SIGTERM it only exits: Slurm requeues a preempted or requeued job itself, and ends the others. A job
that runs again (SLURM_RESTART_COUNT > 0) runs with trainer.resume=true: it goes on from its checkpoints/last.

Several ranks. A job of nodes x tasks_per_node Slurm tasks is one run of that many ranks: each task takes its rank,
world size, local rank and rendezvous address from Slurm (submitit's TorchDistributedEnvironment, as torchrun's
variables), and rank 0 alone claims and writes the run directory; the others log warnings only. srun ends every
task once one fails (--kill-on-bad-exit), and a failed rank exits 1: a run does not wait on a dead rank. Shapes
that cannot work are refused before anything is submitted (check_shape).

Failures. Hydra's launcher waits for the jobs' results one by one and raises at the first failed one, while the
others still run. This one waits for every job, then names each failed one, with its directory and error, in one
SweepError.

Hydra finds it as hydra_plugins/afqmc_launcher and imports it with its other plugins on every run: keep the imports
light (submitit loads in launch() and in the jobs). submitit unpickles it in each job.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf, open_dict

from afqmc.errors import CheckpointError, ConfigError, SweepError, error_line, first_line
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

        rank, world = join_ranks()
        Singleton.set_state(singleton_state)
        setup_globals()
        cfg = self.hydra_context.config_loader.load_sweep_config(
            self.config, list(sweep_overrides) + (OTHER_RANKS if rank else [])
        )
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.id = submitit.JobEnvironment().job_id
            cfg.hydra.job.num = job_num
        if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
            # Set in the config, not added to the overrides: the run's recorded overrides (.hydra/overrides.yaml,
            # which the report groups runs by) stay those the sweep gave it.
            OmegaConf.update(cfg, "trainer.resume", True, force_add=True)  # (a trainer's YAML may lack it)
        try:
            ret = run_job(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=cfg,
                job_dir_key=job_dir_key,
                job_subdir_key="hydra.sweep.subdir",
            )
        except SystemExit as e:
            ret = self._exited(e, Path(cfg.hydra.runtime.output_dir), rank)
        if world > 1 and ret.status != JobStatus.COMPLETED:  # exit 1: srun ends the other ranks, which may wait
            raise SweepError(f"rank {rank} of {world}: {said(ret._return_value)}")  # on this one
        return ret

    def _exited(self, e: SystemExit, run_dir: Path, rank: int) -> JobReturn:
        """A failed run returns a result, so that the sweep need not ask Slurm how the job ended (sacct, which some
        clusters lack); a stopped one leaves none, so that the sweep waits for it to run again."""
        from submitit.core.utils import UncompletedJobError

        if rank != 0:  # rank 0 holds the record, saves checkpoints/last and requeues the job
            if e.code != FAILED:  # stopped with rank 0: exit 0, or srun (--kill-on-bad-exit) would end rank 0's save
                raise SystemExit(0)
            return failed(f"exit code {e.code}")
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
        check_shape(self.params)
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
            **{k if k in base else f"slurm_{k}": v for k, v in self.params.items() if k not in init_keys},
            slurm_srun_args=["--kill-on-bad-exit=1"],  # a task that fails ends the job's others: none waits on it
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
        args = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            args.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        return executor.map_array(self, *zip(*args))


# What a rank other than 0 runs with: no directory of its own (the trainer hands it rank 0's), no record, no log file.
OTHER_RANKS = [
    "hydra.sweep.subdir=.",
    "hydra.output_subdir=null",
    "hydra/job_logging=stdout",
    "hydra.job_logging.root.level=WARNING",
]


def join_ranks() -> tuple[int, int]:
    """(rank, world size) of this task. Several tasks make one run: torchrun's variables from Slurm's, which the
    trainer's process group reads (afqmc/training/distributed.py). CUDA_VISIBLE_DEVICES stays as Slurm set it:
    the trainer picks the local rank's GPU among those it lists."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:  # overwrite: the job's own variables, not any the submitting shell passed on
        os.environ.pop("MASTER_PORT", None)  # (else taken as is: two jobs on one node would share it)
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return env.global_rank, env.num_tasks


def check_shape(params) -> None:
    """One line, before anything is submitted, for a job shape that cannot train one run: each rank uses one GPU
    (or none), and trainer.batch_size is per rank (the global batch grows with the world size)."""
    tasks = params["tasks_per_node"]  # (an int: Hydra's schema refuses null)
    gpus = params.get("gpus_per_task")
    if gpus is None:
        per_node = params.get("gpus_per_node")
        if per_node is None and (count := re.fullmatch(r"gpu(:\w+)?:(\d+)", str(params.get("gres")))):
            per_node = int(count[2])  # gres: gpu:8 or gpu:a100:8
        gpus = (per_node or 0) / tasks
    if gpus not in (0, 1):
        raise ConfigError(
            f"hydra.launcher.tasks_per_node={tasks} with {gpus:g} GPUs per task (gpus_per_node, gpus_per_task or "
            "gres): a rank uses one GPU; allowed: tasks_per_node equal to the GPUs per node, or 0 GPUs (CPU ranks)"
        )


def outcome(job) -> tuple[JobReturn, str | None]:
    """A job's result once it is done (rank 0's, with several), and what went wrong (None: nothing)."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        ret = job.results()[0]
    except FailedJobError as e:  # a rank raised (__call__, for srun to end the others)
        return failed(str(e)), f"Slurm job {job.job_id}, {raised(e)}"
    except UncompletedJobError as e:  # no result: Slurm ended the job (scancel, memory, time limit), or it
        # crashed outside the run; submitit says which where sacct works
        return failed(str(e)), f"no result from Slurm job {job.job_id}: {first_line(e)}"
    if ret.status == JobStatus.COMPLETED:
        return ret, None
    return ret, said(ret._return_value)  # (the property, return_value, raises it)


def said(value: BaseException) -> str:
    """A failed job's error in one line: a SweepError (failed()) says it already."""
    return str(value) if isinstance(value, SweepError) else error_line(value)


def raised(e) -> str:
    """What a task raised, from the traceback submitit hands back: its last line, less the exception's type."""
    parts = str(e).split("\n" + "-" * 22 + "\n")  # the traceback stands between two lines of dashes
    return (parts[1].strip().splitlines()[-1] if len(parts) > 2 else first_line(e)).split(": ", 1)[-1]


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


if __name__ == "__main__":
    # python -m afqmc.runs.launcher in a Slurm task (benchmarks/gpu_check.sh sets the variables by hand): the rank
    # variables its job trains with, and the GPU this rank takes (None: no GPU here)
    import json

    import torch

    from afqmc.training.distributed import local_gpu

    join_ranks()
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    gpu = local_gpu() if torch.cuda.is_available() and "LOCAL_RANK" in os.environ else None
    print(json.dumps({**{name: os.environ.get(name) for name in names}, "cuda_device": gpu}))
