"""checkpoints/last: a run killed with SIGKILL and resumed ends as if it had never stopped; a re-run sweep
skips its finished jobs and resumes the others."""

import json
import signal

import pytest

from afqmc.data.sampling import TrainBatchSampler
from afqmc.runs.records import completed_summary
from afqmc.training.checkpoint import TrainState

from .conftest import records, run_py, signal_at, smoke_steps, summary

# checkpoints/last every 5 steps: nine mid-epoch checkpoints per smoke epoch; a train record each step, so
# that the kill lands after records the resumed run must replay (not repeat).
SMOKE = ["experiment=smoke", "trainer.save_every_steps=5", "trainer.log_every=1", "trainer.predict=false"]


def last_step(run_dir):
    return max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())


def kill_mid_epoch(step, run_dir, *args):
    """python run.py ARGS hydra.run.dir=RUN_DIR, killed (SIGKILL) during optimizer step `step`, before its record:
    past a mid-epoch checkpoints/last, with records past it in metrics.jsonl. Returns checkpoints/last's state."""
    proc = signal_at(step, signal.SIGKILL, *args, f"hydra.run.dir={run_dir}")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    state = TrainState.load(run_dir / "checkpoints" / "last" / "state.pt")
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

    # killed in step 13 (checkpoints/last at step 10), then once resumed in step 58 (at step 55), in epoch 2
    first = kill_mid_epoch(13, killed, *args)
    assert (first.epoch, first.batch, first.step) == (1, 10, 10)
    second = kill_mid_epoch(smoke_steps() + 8, killed, *args, "trainer.resume=true")
    assert second.epoch == 2 and second.step > first.step
    assert (second.batch, second.step) == (5, smoke_steps() + 5)
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
    kill_mid_epoch(13, tmp_path / "1", *SMOKE, "trainer.epochs=1", "optimizer.lr=2e-3")
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
