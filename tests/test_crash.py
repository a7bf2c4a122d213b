"""Crashes lose nothing already earned: a diverged run, a Ctrl-C, SIGTERM or SIGUSR2 (a second Ctrl-C too), a kill
in the middle of a save."""

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from afqmc.models.modeling import BertForPairwiseCLS
from afqmc.training.checkpoint import TrainState, find_last

from .conftest import ENV, ROOT, records, run_py, signal_at, smoke_steps, summary

SMOKE = ["experiment=smoke", "trainer.log_every=1", "trainer.predict=false"]


def total_norm(checkpoint):
    return torch.nn.utils.get_total_norm(list(BertForPairwiseCLS.from_pretrained(checkpoint).parameters())).item()


@pytest.mark.slow
def test_diverged_run_stops_with_its_step_and_keeps_finite_checkpoints(tmp_path):
    # AdamW moves each weight by about lr per step: at 1e30 the weights overflow within a few steps.
    proc = run_py(
        *SMOKE,
        "optimizer.lr=1e30",
        "trainer.max_grad_norm=null",
        "trainer.save_every_steps=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "TrainingError: training diverged at epoch 1, step " in out and "optimizer.lr" in out
    assert "Traceback" not in out
    failed = summary(tmp_path)
    assert failed["status"] == "failed" and failed["error"].startswith("TrainingError: training diverged")
    failed_step = int(failed["error"].split("step ")[1].split(":")[0])
    assert 0 < TrainState.load(tmp_path / "checkpoints" / "last" / "state.pt").step < failed_step
    assert torch.isfinite(torch.tensor(total_norm(tmp_path / "checkpoints" / "last")))


STOPPED = [*SMOKE, "trainer.epochs=1", "trainer.save_every_steps=null"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run that the stopped runs below must end as: the same config, never stopped."""
    run_dir = tmp_path_factory.mktemp("straight")
    proc = run_py(*STOPPED, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


# SIGTERM: what Slurm (and most process managers) send to end a job; SIGUSR2: the warning the Slurm launcher has
# sbatch send before the time limit. Exit codes as a shell reports a signal's.
@pytest.mark.slow
@pytest.mark.parametrize(
    "signum,name",
    [(signal.SIGINT, "Ctrl-C (SIGINT)"), (signal.SIGTERM, "SIGTERM"), (signal.SIGUSR2, "SIGUSR2")],
)
def test_a_stop_signal_saves_last_marks_the_summary_and_resumes_to_the_same_result(tmp_path, straight, signum, name):
    args = [*STOPPED, f"hydra.run.dir={tmp_path}"]
    proc = signal_at(3, signum, *args)  # during the third step: mid-epoch
    out = proc.stdout
    assert proc.returncode == 128 + signum, out[-3000:]
    assert "Traceback" not in out and "trainer.resume=true" in out
    stopped = summary(tmp_path)
    assert stopped["status"] == "interrupted" and stopped["error"].startswith(f"Interrupted: {name} at epoch 1, step ")
    state = TrainState.load(tmp_path / "checkpoints" / "last" / "state.pt")
    assert state.epoch == 1 and 3 <= state.batch < smoke_steps() and state.step == state.batch
    assert state.step == 3  # the step the signal came in, ended before it stopped
    steps = [record["step"] for record in records(tmp_path)]
    assert steps == list(range(1, state.step + 1))  # everything logged up to the stop, nothing past it

    proc = run_py(*args, "trainer.resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, reference = summary(tmp_path), summary(straight)
    assert resumed["status"] == "completed" and resumed["train"]["steps"] == smoke_steps()
    assert (resumed["best"], resumed["dev"]) == (reference["best"], reference["dev"])
    assert records(tmp_path) == records(straight)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_still_marks_the_summary(tmp_path):
    # Two Ctrl-C within the first step: the first is taken (the run says it stops after this step), the second
    # comes before that step ends.
    proc = signal_at(1, (signal.SIGINT, signal.SIGINT), *SMOKE, "trainer.epochs=1", f"hydra.run.dir={tmp_path}")
    out = proc.stdout
    assert "Ctrl-C (SIGINT): saving checkpoints/last after this step" in out, out[-3000:]
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert summary(tmp_path) == {
        "status": "interrupted",
        "error": "Interrupted: Ctrl-C (SIGINT) again: stopped at once, checkpoints/last not saved",
    }
    assert not (tmp_path / "checkpoints" / "last").exists()  # at once: not after the step
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # the step stopped before its record


# Saves a checkpoint, changes the weights, and saves again into the same place, killed (SIGKILL) at
# `when`: while the new copy is being written, or between the two renames that swap it in.
KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    from transformers import AutoTokenizer
    from afqmc.training import checkpoint
    from afqmc.training.checkpoint import TrainState
    from afqmc.models.modeling import BertForPairwiseCLS

    source, target, when = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    model, tokenizer = BertForPairwiseCLS.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    checkpoint.save(target, "bert_pair_cls", model, tokenizer, TrainState(step=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if when == "writing":  # the weights are written, the state is not yet
        torch.save = die
    else:  # the old copy is renamed aside, the new one not yet in its place
        rename = Path.rename
        Path.rename = lambda self, to: die() if self.name.endswith(".tmp") else rename(self, to)
    checkpoint.save(target, "bert_pair_cls", model, tokenizer, TrainState(step=2))
""")


@pytest.mark.parametrize("when", ["writing", "swapping"])
@pytest.mark.slow
def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path, tiny_bert_dir, when):
    last = tmp_path / "checkpoints" / "last"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(tiny_bert_dir), str(last), when],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert find_last(tmp_path) == last  # (puts the previous copy back if the kill fell between the renames)
    assert TrainState.load(last / "state.pt").step == 1
    assert total_norm(last) == pytest.approx(total_norm(tiny_bert_dir))  # the weights before the +1
