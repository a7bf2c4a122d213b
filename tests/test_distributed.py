"""torchrun: two CPU processes (gloo) train one run, in one directory, and score each pair once."""

import json
import math

import pytest

from afqmc.training.checkpoint import load_model
from afqmc.training.components import build_trainer

from .conftest import SMOKE_BATCH, SMOKE_PAIRS, compose_cfg, smoke_steps, summary, torchrun_py

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
