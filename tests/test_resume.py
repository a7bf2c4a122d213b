"""checkpoints/last: a run killed with SIGKILL and resumed ends as if it had never stopped; a re-run sweep
skips its finished jobs and resumes the others."""

import json
import signal
import time

import pytest

from afqmc.data.sampling import TrainBatchSampler
from afqmc.errors import CheckpointError
from afqmc.runs.records import completed_summary
from afqmc.training.checkpoint import TrainState

from .conftest import records, run_py, smoke_steps, start_run, summary

# checkpoints/last every 5 steps: nine mid-epoch checkpoints per smoke epoch; a train record each step, so
# that the kill lands after records the resumed run must replay (not repeat).
SMOKE = ["experiment=smoke", "trainer.save_every_steps=5", "trainer.log_every=1", "trainer.predict=false"]


def read_state(run_dir):
    """checkpoints/last's training state, or None (none yet, or caught between the renames of a save)."""
    try:
        return TrainState.load(run_dir / "checkpoints" / "last" / "state.pt")
    except CheckpointError:
        return None


def last_step(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    return max((json.loads(line)["step"] for line in lines[:-1]), default=0)  # the last line may be half written


def kill_mid_epoch(proc, run_dir, epoch, after_step=0):
    """SIGKILL the run once checkpoints/last holds a position inside `epoch` or a later one (and past
    `after_step`), and metrics.jsonl has gone past it."""
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        state = read_state(run_dir)
        if state and state.epoch >= epoch and state.batch > 0 and last_step(run_dir) > state.step > after_step:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail(f"no mid-epoch checkpoint in epoch >= {epoch} before the run ended (rc {proc.returncode})")
    state = read_state(run_dir)
    assert state.batch > 0, "the run went past its mid-epoch checkpoint before the kill landed"
    assert last_step(run_dir) > state.step
    assert completed_summary(run_dir) is None  # (a summary of the failed attempt below may be there)
    return state


def test_sampler_start_skips_the_first_batches():
    sampler = TrainBatchSampler(list(range(5, 105)), 8, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start=5)
    assert list(sampler) == whole[5:] and len(sampler) == len(whole)
    sampler.set_epoch(3)
    assert len(list(sampler)) == len(whole)  # the offset is for one epoch only


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert_cls", "bert_pair_module"])
def test_killed_run_resumes_to_the_same_result(tmp_path, model):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the dev loss falls: the best is epoch 2, after the kill
    args = [*SMOKE, f"model={model}", "trainer.epochs=2", "trainer.metric=loss"]
    # resume=true in a fresh directory: starts from scratch
    proc = run_py(*args, "trainer.resume=true", f"hydra.run.dir={straight}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no " in (log := (straight / "run.log").read_text()) and "starting from scratch" in log

    first = kill_mid_epoch(start_run(*args, f"hydra.run.dir={killed}"), killed, epoch=1)

    # killed again once resumed, in epoch 2 (whose start it may have reached before or after the first kill)
    resumed = start_run(*args, "trainer.resume=true", f"hydra.run.dir={killed}")
    second = kill_mid_epoch(resumed, killed, epoch=2, after_step=first.step)
    proc = run_py(*args, "trainer.resume=true", f"hydra.run.dir={killed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (killed / "run.log").read_text()
    for state in (first, second):
        assert f"epoch {state.epoch}, batch {state.batch}, step {state.step}" in log

    a, b = summary(straight), summary(killed)
    assert b["status"] == "completed" and a["best"]["epoch"] == 2
    assert b["dev"] == a["dev"] and b["best"] == a["best"]
    assert (
        b["train"]["steps"] == a["train"]["steps"] == smoke_steps(2) and b["train"]["samples"] == a["train"]["samples"]
    )
    # every train loss and dev metric along the way, once each: the replayed steps left no duplicates
    assert records(killed) == records(straight)


@pytest.mark.slow
def test_sweep_rerun_skips_finished_jobs_and_resumes_the_rest(tmp_path):
    sweep = ["-m", *SMOKE, "trainer.epochs=1", f"hydra.sweep.dir={tmp_path}", "trainer.resume=true"]
    proc = run_py(*sweep, "optimizer.lr=1e-3")  # job 0 finishes...
    assert proc.returncode == 0, proc.stderr[-3000:]
    # ... and job 1 (optimizer.lr=2e-3) is killed mid-epoch: the same config as the sweep gives it
    kill_mid_epoch(
        start_run(*SMOKE, "trainer.epochs=1", "optimizer.lr=2e-3", f"hydra.run.dir={tmp_path / '1'}"),
        tmp_path / "1",
        epoch=1,
    )
    finished = tmp_path / "0" / "summary.json"
    mtime = finished.stat().st_mtime_ns

    proc = run_py(*sweep, "optimizer.lr=1e-3,2e-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert finished.stat().st_mtime_ns == mtime
    assert "completed: skipped (best f1_macro" in (tmp_path / "0" / "run.log").read_text()
    assert "resuming from" in (tmp_path / "1" / "run.log").read_text()
    assert summary(tmp_path / "1")["status"] == "completed"
    steps = [r["step"] for r in records(tmp_path / "1") if r["type"] == "train"]
    assert steps == list(range(1, smoke_steps() + 1))  # each step once: none lost, none repeated
    report = (tmp_path / "report.csv").read_text().splitlines()
    assert len(report) == 3 and "failed" not in "".join(report)  # header + two completed jobs
