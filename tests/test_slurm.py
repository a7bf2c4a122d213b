"""hydra/launcher=slurm against a real Slurm: a throwaway single-node cluster (tests/slurm/start.sh) on this machine.

Needs Debian's slurm-wlm and munge packages and root (the daemons run as root); skipped, saying so, without them.
"""

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import ROOT, TORCHRUN, records, summary

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")
# The cluster has one partition, "debug", and 4 CPUs (on the machine's cores) and no GPU; a task asks for one CPU.
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]
SMOKE = ["experiment=smoke", "trainer.log_every=10", "trainer.save_every_steps=null"]
TWO_RANKS = ["hydra.launcher.tasks_per_node=2"]  # one run of two ranks (gloo), on the node's two CPUs


def _missing() -> str | None:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"needs Slurm and munge (apt-get install slurm-wlm munge); missing: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "starts slurmctld and slurmd as root; not root here"
    return None


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A single-node Slurm for this session: the environment its clients need; stopped by PID at the end."""
    if reason := _missing():
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(
        ["bash", str(ROOT / "tests" / "slurm" / "start.sh"), str(state)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:  # installed but not running: that is a failure to see, not a skip
        pytest.fail(f"tests/slurm/start.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    pids = [int(p) for p in proc.stdout.split()]
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "OMP_NUM_THREADS": "1"}
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
        wait_until(lambda: not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout, 40)
        for pid in reversed(pids):  # slurmd, slurmctld, then munged, which they authenticate with
            stop(pid)


def stop(pid: int) -> None:
    """SIGTERM, and SIGKILL if the process still lives 30 s later."""
    try:
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not alive(pid), 30):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    """Not gone, and not a zombie: the daemons' parent (start.sh) has exited, and nothing may reap them at once."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def sweep_args(sweep_dir, *overrides):
    return [sys.executable, str(ROOT / "run.py"), "-m", *LAUNCHER, *SMOKE, *overrides, f"hydra.sweep.dir={sweep_dir}"]


def run_sweep(env, sweep_dir, *overrides, timeout=300):
    return subprocess.run(
        sweep_args(sweep_dir, *overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_same_result(run_dir, reference):
    a, b = summary(run_dir), summary(reference)
    assert a["status"] == "completed", a
    assert (a["best"], a["dev"], a["world_size"]) == (b["best"], b["dev"], b["world_size"])
    assert (a["train"]["steps"], a["train"]["samples"]) == (b["train"]["steps"], b["train"]["samples"])
    assert records(run_dir) == records(reference)  # each train loss and dev metric once: none lost, none repeated
    assert predictions(run_dir) == predictions(reference)


def predictions(run_dir) -> str:
    (path,) = (run_dir / "predictions").glob("*_predict.json")  # (named by dataset.task)
    return path.read_text()


def test_sweep_submits_an_array_waits_and_writes_the_report(slurm, tmp_path):
    proc = run_sweep(
        slurm, tmp_path, "optimizer.lr=1e-3,1e-4", "trainer.seed=1,2", "trainer.epochs=1", "trainer.max_steps=10"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = read_csv(tmp_path / "report.csv")
    assert [r["status"] for r in rows] == ["completed"] * 4
    grid = {("optimizer.lr=0.001", "trainer.seed=1"), ("optimizer.lr=0.001", "trainer.seed=2")}
    grid |= {("optimizer.lr=0.0001", "trainer.seed=1"), ("optimizer.lr=0.0001", "trainer.seed=2")}
    assert {
        tuple(o for o in r["overrides"].split() if o.startswith(("optimizer.", "trainer.seed"))) for r in rows
    } == grid
    (script,) = (tmp_path / ".submitit").glob("*/*_submission.sh")  # one sbatch script: one array
    array_id = script.parent.name
    text = script.read_text()
    for line in ("--array=0-3%", "--partition=debug", "--cpus-per-task=1", "--signal=USR2@120", "--requeue"):
        assert f"#SBATCH {line}" in text, line
    for job in range(4):
        run_dir = tmp_path / str(job)
        assert summary(run_dir)["status"] == "completed"
        assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (run_dir / "checkpoints" / "best").is_dir()
        log = (tmp_path / ".submitit" / f"{array_id}_{job}" / f"{array_id}_{job}_0_log.out").read_text()
        assert f"job_id={array_id}_{job}," in log and "best f1_macro" in log  # the run ran in that array task


@pytest.fixture(scope="module")
def preempted(slurm, tmp_path_factory):
    """One sweep of four array tasks, each one run of 2 ranks (2 Slurm tasks): jobs 0, 1 and 3 train alike
    (dataset.task only names the predictions file); Slurm stops jobs 0 and 1 mid-training (see `preempt`), job 3
    runs undisturbed; job 2 has a planted config error. Beside it, the same training under torchrun
    --nproc_per_node=2, without Slurm and without a stop: the result each of the three must end with."""
    root = tmp_path_factory.mktemp("preempted")
    train = ["trainer.epochs=5", "trainer.seed=3", "trainer.log_every=1"]  # 125 steps of 2 ranks: ~4 s
    reference = subprocess.Popen(
        [*TORCHRUN, str(ROOT / "run.py"), *SMOKE, *train, f"hydra.run.dir={root / 'ref'}"],
        cwd=root,
        env=slurm,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    args = sweep_args(
        root / "sweep", *TWO_RANKS, *train, "hydra.launcher.timeout_min=10", "dataset.task=afqmc,twin,a/b,x"
    )
    proc = subprocess.Popen(args, cwd=ROOT, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        preempt(slurm, root / "sweep", proc)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert reference.wait(timeout=300) == 0
    return SimpleNamespace(returncode=proc.returncode, out=out, err=err, sweep=root / "sweep", reference=root / "ref")


def preempt(env, sweep_dir, sweep):
    """As soon as job 0 trains, scontrol requeue it: Slurm sends SIGTERM to both ranks, as on a preemption, and
    requeues it.

    As soon as job 1 trains, pause both its ranks (SIGSTOP) and cut its time limit to 2 min. Slurm looks at time
    limits every 30 s; at its next look the warning that sbatch --signal asks for (USR2, 120 s before the limit) is
    due: Slurm sends SIGCONT, which wakes the ranks mid-step, then SIGUSR2. (The pause keeps them mid-training until
    then without a long run.) Once the job has stopped, its limit goes back to 10 min, or it would be warned again."""
    task, _ = wait_training(env, sweep_dir / "0", sweep)
    subprocess.run(["scontrol", "requeue", task], env=env, check=True)
    task, job_id = wait_training(env, sweep_dir / "1", sweep)
    for pid in job_processes(env, job_id).values():
        os.kill(pid, signal.SIGSTOP)
    subprocess.run(["scontrol", "update", f"JobId={task}", "TimeLimit=2"], env=env, check=True)
    assert wait_until(lambda: "SIGUSR2" in read(sweep_dir / "1" / "run.log"), 60), "no time-limit warning in 60 s"
    subprocess.run(["scontrol", "update", f"JobId={task}", "TimeLimit=10"], env=env, check=True)


def wait_training(env, run_dir, sweep) -> tuple[str, str]:
    """(array task, job id) of the job of run_dir, as soon as it trains: its metrics.jsonl grows while it runs."""
    metrics, last, deadline = run_dir / "metrics.jsonl", None, time.monotonic() + 240
    while time.monotonic() < deadline and sweep.poll() is None:
        size = metrics.stat().st_size if metrics.exists() else 0
        if last is not None and size > last:
            squeue = subprocess.run(["squeue", "-h", "-r", "-o", "%i %A %T"], env=env, capture_output=True, text=True)
            for task, job_id, state in map(str.split, squeue.stdout.splitlines()):
                # (an array of one job: squeue names its task by the job id alone)
                if (task.endswith(f"_{run_dir.name}") or task == job_id) and state == "RUNNING":
                    return task, job_id
        last = size
        time.sleep(0.2)
    pytest.fail(f"job {run_dir.name} was not seen training (sweep exit code {sweep.poll()})")


def job_processes(env, job_id: str) -> dict[int, int]:
    """{rank: PID} of the Python processes that run a job: its Slurm tasks in step 0 (srun's; the batch step runs
    srun), each with its rank in SLURM_PROCID."""
    listed = subprocess.run(["scontrol", "listpids", job_id], env=env, capture_output=True, text=True, check=True)
    ranks = {}
    for pid, _, step, *_ in map(str.split, listed.stdout.splitlines()[1:]):
        if step == "0" and b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
            environ = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if v)
            ranks[int(environ[b"SLURM_PROCID"])] = int(pid)
    assert ranks, f"no submitit process among job {job_id}'s: {listed.stdout}"
    return ranks


def read(path) -> str:
    return path.read_text() if path.exists() else ""


def test_a_two_task_job_is_one_run_with_torchruns_result(preempted):
    assert summary(preempted.reference)["world_size"] == 2
    assert_same_result(preempted.sweep / "3", preempted.reference)  # dev metrics, predictions, every record
    # one run directory a job: rank 1 made none of its own, wrote no log file; the report has each job once
    assert sorted(p.name for p in preempted.sweep.iterdir() if p.is_dir()) == [".submitit", "0", "1", "2", "3"]
    assert [r["run"] for r in read_csv(preempted.sweep / "report.csv")] == ["0", "1", "2", "3"]
    assert [p.name for p in (preempted.sweep / "3").glob("*.log")] == ["run.log"]


def test_a_requeued_job_saves_resumes_and_ends_as_if_never_stopped(preempted):
    log = (preempted.sweep / "0" / "run.log").read_text()
    assert "Interrupted: SIGTERM at epoch " in log  # saved checkpoints/last at the step it was at
    resumed = re.findall(r"resuming from \S+: epoch \d+, batch (\d+), step \d+", log)
    assert resumed and any(int(batch) > 0 for batch in resumed), log[-3000:]  # from mid-epoch: from what it saved
    assert_same_result(preempted.sweep / "0", preempted.reference)


def test_a_job_at_its_time_limit_saves_is_requeued_and_ends_as_if_never_stopped(preempted):
    log = (preempted.sweep / "1" / "run.log").read_text()
    assert "Interrupted: SIGUSR2 at epoch " in log  # Slurm's warning came while it trained
    assert "resuming from " in log
    (submitit_log,) = preempted.sweep.glob(".submitit/*_1/*_1_0_log.out")
    assert "Requeued job" in submitit_log.read_text()  # by submitit, after the run saved
    assert_same_result(preempted.sweep / "1", preempted.reference)


def test_a_failed_job_is_named_and_the_others_complete(preempted):
    assert preempted.returncode == 1
    assert "Traceback" not in preempted.err, preempted.err[-3000:]
    (error,) = [line for line in preempted.err.splitlines() if "SweepError" in line]
    assert error.startswith(f"SweepError: 1 of 4 jobs failed: job 2 ({preempted.sweep / '2'}): Slurm job "), error
    assert ", rank 0 of 2: ConfigError: dataset.task='a/b' is invalid" in error
    rows = {r["run"]: r for r in read_csv(preempted.sweep / "report.csv")}
    assert [rows[job]["status"] for job in "0123"] == ["completed", "completed", "failed", "completed"]
    assert rows["2"]["error"].startswith("ConfigError: dataset.task='a/b' is invalid")


def test_a_rank_that_stops_answering_fails_the_job_within_the_timeout(slurm, tmp_path):
    """Rank 1 paused (SIGSTOP) mid-training, as a node that is lost without closing its connections: rank 0 waits
    at its next collective for trainer.dist_timeout_s, fails the run, and its exit ends the job (srun
    --kill-on-bad-exit), rank 1 included. Before the timeout existed, gloo waited 30 min, the job with it."""
    # 50 epochs: time enough to be stopped (a run that completes fails the test), ended long before
    args = sweep_args(tmp_path, *TWO_RANKS, "trainer.epochs=50", "trainer.log_every=1", "trainer.dist_timeout_s=10")
    proc = subprocess.Popen(args, cwd=ROOT, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        task, job_id = wait_training(slurm, tmp_path / "0", proc)
        os.kill(job_processes(slurm, job_id)[1], signal.SIGSTOP)
        out, err = proc.communicate(timeout=180)  # the sweep waits for the job: it ended
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    result = summary(tmp_path / "0")
    assert result["status"] == "failed" and "Timed out" in result["error"], result
    # not completed, not running on: Slurm ends it (the sweep has rank 0's result as soon as rank 0 wrote it)
    show = ["scontrol", "show", "job", task]
    ended = wait_until(lambda: b"JobState=FAILED" in subprocess.run(show, env=slurm, capture_output=True).stdout, 60)
    assert ended, subprocess.run(show, env=slurm, capture_output=True, text=True).stdout
    assert f"SweepError: 1 of 1 jobs failed: job 0 ({tmp_path / '0'}): " in err, err[-3000:]
