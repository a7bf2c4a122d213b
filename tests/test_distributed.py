"""torchrun: two CPU processes (gloo) train one run, in one directory, and score each pair once."""

import json
import math
import signal

import pytest

from afqmc.training.checkpoint import load_model
from afqmc.training.components import build_trainer

from .conftest import SMOKE_BATCH, SMOKE_PAIRS, compose_cfg, signal_at, smoke_steps, summary, torchrun_py

EVAL_BATCH = 16


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert_cls", "bert_pair_module"])
def test_torchrun_two_processes_one_run_directory(tmp_path, model):
    # the ranks score uneven shares of the dev batches; whole batches of train pairs on both ranks
    assert math.ceil(SMOKE_PAIRS["dev"] / EVAL_BATCH) % 2 == 1 and SMOKE_PAIRS["train"] % (2 * SMOKE_BATCH) == 0
    args = ["experiment=smoke", f"model={model}", "trainer.epochs=2", f"trainer.eval_batch_size={EVAL_BATCH}"]
    # bert_cls: dev scored every 7 steps, mid-epoch, by both ranks; a tracker, which rank 0 alone writes
    watched = ["trainer.eval_every_steps=7", "logger=tensorboard"] if model == "bert_cls" else []
    proc = torchrun_py(*args, *watched, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # rank 1 wrote nothing of its own
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    result = summary(run)
    assert result["world_size"] == 2 and result["global_batch_size"] == 2 * SMOKE_BATCH
    assert result["train"]["samples"] == 2 * SMOKE_PAIRS["train"] and result["train"]["steps"] == smoke_steps(2) // 2
    preds = [json.loads(line) for line in (run / "predictions" / "afqmc_predict.json").read_text().splitlines()]
    assert [p["id"] for p in preds] == list(range(SMOKE_PAIRS["test"]))
    if watched:
        steps = [
            r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"
        ]
        assert steps == [*range(7, result["train"]["steps"] + 1, 7), result["train"]["steps"]]
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one writer: rank 0's

    # one process scoring the saved best checkpoint gets the dev metrics the two processes reported
    single = build_trainer(compose_cfg([*args, "trainer.predict=false"]), tmp_path / "single")
    single.setup()
    single.model.load_state_dict(load_model(run / "checkpoints" / "best").state_dict())
    dev = single.evaluate("dev")
    assert dev == pytest.approx(result["dev"], abs=1e-5)


@pytest.mark.slow
def test_a_stop_signal_to_one_rank_stops_both_at_the_same_step(tmp_path):
    """SIGUSR2 (the time-limit warning) to rank 1 alone at step 7: both ranks stop at step 10, the next log step,
    where they agree; rank 0 saves checkpoints/last there, and the run resumes from it to its end."""
    args = ["experiment=smoke", "trainer.epochs=1", "trainer.log_every=5", "trainer.save_every_steps=null"]
    args += [f"hydra.run.dir={tmp_path / 'run'}"]
    proc = signal_at(7, signal.SIGUSR2, *args, torchrun=True, rank=1, cwd=tmp_path)
    assert proc.returncode != 0 and proc.stdout.count("signal hook: SIGUSR2 at step 7") == 1, proc.stdout[-3000:]
    assert "Interrupted: SIGUSR2 at epoch 1, step 10" in proc.stdout  # rank 1's line
    log = (tmp_path / "run" / "run.log").read_text()  # rank 0's
    assert "Interrupted: a stop signal to another rank at epoch 1, step 10: saved " in log, log[-3000:]
    resumed = torchrun_py(*args, "trainer.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoints/last: epoch 1, batch 10, step 10" in (tmp_path / "run" / "run.log").read_text()
    assert summary(tmp_path / "run")["train"]["steps"] == smoke_steps(1) // 2
