"""The Slurm launcher without a Slurm: the job shapes it refuses before submitting anything, and how a task's Slurm
variables become the rank variables a run of several tasks trains with (tests/test_slurm.py runs them on a Slurm)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import ENV, ROOT, run_py

SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "experiment=smoke"]


@pytest.mark.parametrize(
    "shape,message",
    [
        # 2 nodes of 8 GPUs with tasks_per_node left at 1: one process would drive 8 GPUs
        (["hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=8"], "tasks_per_node=1 with 8 GPUs"),
        (["hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=1"], "tasks_per_node=2 with 0.5 GPUs"),
        (["hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_task=2"], "tasks_per_node=2 with 2 GPUs"),
        (
            ["hydra.launcher.tasks_per_node=4", "hydra.launcher.gpus_per_node=null", "hydra.launcher.gres=gpu:a100:8"],
            "tasks_per_node=4 with 2 GPUs",
        ),
    ],
)
def test_a_job_shape_that_cannot_train_one_run_is_one_line_and_submits_nothing(tmp_path, shape, message):
    env = {**ENV, "SLURM_CONF": str(tmp_path / "no-slurm.conf")}  # were anything submitted, sbatch would fail
    proc = run_py("-m", *SLURM, *shape, f"hydra.sweep.dir={tmp_path / 'sweep'}", env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"ConfigError: hydra.launcher.{message} per task (gpus_per_node, gpus_per_task or gres): a rank uses one GPU; "
        "allowed: tasks_per_node equal to the GPUs per node, or 0 GPUs (CPU ranks)"
    ], proc.stderr
    assert not (tmp_path / "sweep" / ".submitit").exists()


def test_several_nodes_with_tasks_per_node_unset_is_one_line(tmp_path):
    env = {**ENV, "SLURM_CONF": str(tmp_path / "no-slurm.conf")}
    shape = ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=null"]  # Hydra's schema: an int
    proc = run_py("-m", *SLURM, *shape, f"hydra.sweep.dir={tmp_path / 'sweep'}", env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "ConfigError: Error merging override hydra.launcher.tasks_per_node=null: "
        "field 'hydra.launcher.tasks_per_node' is not Optional"
    ]
    assert not (tmp_path / "sweep" / ".submitit").exists()


@pytest.mark.parametrize("gpus", ["gpus_per_node=8", "gpus_per_task=1", "gpus_per_node=0"])
def test_one_task_per_gpu_or_cpu_ranks_pass_the_check(gpus):
    from afqmc.runs.launcher import check_shape

    check_shape({"nodes": 2, "tasks_per_node": 8, gpus.split("=")[0]: int(gpus.split("=")[1])})


def slurm_task(procid: int, localid: int, nodeid: int) -> dict:
    """The variables Slurm gives task `procid` of a job of 2 nodes x 2 tasks (and submitit's own)."""
    torchrun = ("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", *torchrun))}
    return {
        **env,
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "7",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[3-4]",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NODEID": str(nodeid),
        "RANK": "0",  # left over from the submitting shell: the job's own win
        "MASTER_PORT": "29500",
    }


def test_each_slurm_task_is_one_rank_of_one_run():
    ranks = []
    for procid, localid, nodeid in [(0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1)]:
        proc = subprocess.run(
            [sys.executable, "-m", "afqmc.runs.launcher"],
            env=slurm_task(procid, localid, nodeid),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        ranks.append(json.loads(proc.stdout))
    assert [(r["RANK"], r["LOCAL_RANK"]) for r in ranks] == [("0", "0"), ("1", "1"), ("2", "0"), ("3", "1")]
    assert {(r["WORLD_SIZE"], r["LOCAL_WORLD_SIZE"], r["MASTER_ADDR"]) for r in ranks} == {("4", "2", "gpu3")}
    # one rendezvous: the first node, a port from the job id (not one the shell had: two jobs on a node would share it)
    assert len({r["MASTER_PORT"] for r in ranks}) == 1 and ranks[0]["MASTER_PORT"] != "29500"
