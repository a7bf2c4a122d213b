"""Watching and steering a run: dev scored every N steps, early stopping, which checkpoints stay on disk."""

import random

import pytest

import afqmc
from afqmc.errors import TrainingError
from afqmc.report import write_report
from afqmc.training.checkpoint import TrainState

from .conftest import compose_cfg, kill_after_save, read_jsonl, records, run_py, summary, write_jsonl
from .test_train import product_pairs

STEPS_PER_EPOCH = 6  # pairs_dir: 12 train pairs, 2 a batch


def train(out, pairs_dir, tiny_bert_dir, *overrides):
    """A tiny in-process run on pairs_dir; returns its summary.json."""
    cfg = compose_cfg(
        [
            f"dataset.root={pairs_dir}",
            f"model.checkpoint={tiny_bert_dir}",
            "trainer.batch_size=2",
            "trainer.epochs=2",
            "trainer.log_every=1",
            *overrides,
        ]
    )
    afqmc.train(cfg, out)
    return summary(out)


def evals(out):
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "eval"]


def report_md(out, *overrides):
    """The report of one run directory (run.py's Hydra would have written its overrides)."""
    (out / ".hydra").mkdir(exist_ok=True)  # (afqmc.train wrote its record, with no overrides: in Python)
    (out / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    write_report(out)
    return (out / "report.md").read_text()


def test_eval_every_n_steps_and_at_the_end(tmp_path, pairs_dir, tiny_bert_dir):
    result = train(tmp_path, pairs_dir, tiny_bert_dir, "trainer.eval_every_steps=5", "trainer.metric=loss")
    scored = evals(tmp_path)
    assert [(r["epoch"], r["step"]) for r in scored] == [(1, 5), (2, 10), (2, 12)]  # 12 steps: the end too
    best = min(scored, key=lambda r: r["loss"])
    assert result["best"] == {"epoch": best["epoch"], "step": best["step"], "metric": "loss", "value": best["loss"]}
    # the best checkpoint is the one that evaluation scored, whichever it was (reloaded when not the last)
    assert result["dev"] == pytest.approx({k: v for k, v in best.items() if k in result["dev"]}, abs=1e-6)


def test_eval_every_epoch_by_default(tmp_path, pairs_dir, tiny_bert_dir):
    train(tmp_path, pairs_dir, tiny_bert_dir)
    assert [(r["epoch"], r["step"]) for r in evals(tmp_path)] == [(1, 6), (2, 12)]
    md = report_md(tmp_path, "trainer.epochs=2")
    assert "| best epoch |" in md and "best step" not in md and "stopped early" not in md


def test_early_stopping_counts_evaluations_without_gain(tmp_path, pairs_dir, tiny_bert_dir):
    # a loss cannot fall by more than 1 from its first value here (0.69, and it stays >= 0): no later evaluation
    # counts as a gain, so the run stops at its third evaluation, patience 2
    patience = ["trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=1"]
    result = train(tmp_path, pairs_dir, tiny_bert_dir, "trainer.eval_every_steps=2", "trainer.metric=loss", *patience)
    assert result["stopped_early"] == {"epoch": 1, "step": 6} and result["train"]["steps"] == 6
    assert [r["step"] for r in evals(tmp_path)] == [2, 4, 6]
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["step"] == 6  # nothing trained past the stop
    off = tmp_path.with_name(f"{tmp_path.name}_off")  # (beside, not below: the report finds every run below)
    assert train(off, pairs_dir, tiny_bert_dir, "trainer.eval_every_steps=2")["stopped_early"] is None

    md = report_md(tmp_path, "trainer.early_stopping.patience=2")
    assert "1 of 1 runs stopped early" in md and "| stopped early |" in md and "| step 6 |" in md
    assert "| best step |" in md  # several evaluations an epoch: the step tells them apart


@pytest.mark.parametrize("metric", ["loss", "f1_macro"])
def test_early_stopping_follows_the_metrics_direction(tmp_path, tiny_bert_dir, metric):
    """The loss is better lower, the others higher: the stop comes where the patience runs out in that direction."""
    rng = random.Random(0)
    write_jsonl(tmp_path / "d" / "train.json", product_pairs(rng, 320))
    write_jsonl(tmp_path / "d" / "dev.json", product_pairs(rng, 100))
    args = ["dataset.splits.test=null", "model.pretrained=false", "optimizer.lr=1e-3", "trainer.batch_size=16"]
    args += ["trainer.epochs=3"]
    args += [f"trainer.metric={metric}", "trainer.eval_every_steps=4", "trainer.early_stopping.patience=2"]
    result = train(tmp_path / "out", tmp_path / "d", tiny_bert_dir, *args)
    values = [(r["step"], r[metric]) for r in evals(tmp_path / "out")]

    def stop(lower_is_better):
        best, waited = None, 0
        for step, value in values:
            gain = best is None or (value < best if lower_is_better else value > best)
            best, waited = (value, 0) if gain else (best, waited + 1)
            if waited == 2:
                return step
        return None

    right, wrong = stop(metric == "loss"), stop(metric != "loss")
    assert right != wrong, values  # (the data tell the two directions apart)
    assert (result["stopped_early"] or {}).get("step") == right, values
    if right is not None:
        assert values[-1][0] == right  # no evaluation after the stop


@pytest.mark.parametrize("keep_last", ["until_done", "always", "never"])
def test_checkpoints_kept_by_keep_last(tmp_path, pairs_dir, tiny_bert_dir, keep_last):
    result = train(tmp_path, pairs_dir, tiny_bert_dir, f"trainer.keep_last={keep_last}", "trainer.save_every_steps=1")
    assert result["status"] == "completed" and (tmp_path / "checkpoints" / "best").is_dir()
    assert (tmp_path / "checkpoints" / "last").exists() == (keep_last == "always")
    # a run that fails keeps checkpoints/last, from before the failure, unless it never writes one
    diverges = ["optimizer.lr=1e30", "trainer.max_grad_norm=null", "trainer.save_every_steps=1"]
    with pytest.raises(TrainingError, match="training diverged"):
        train(tmp_path / "failed", pairs_dir, tiny_bert_dir, f"trainer.keep_last={keep_last}", *diverges)
    assert (tmp_path / "failed" / "checkpoints" / "last").exists() == (keep_last != "never")


def test_save_best_false_writes_no_checkpoint_and_reports_the_best_evaluation(tmp_path, pairs_dir, tiny_bert_dir):
    args = ["trainer.eval_every_steps=1", "trainer.predict=false", "trainer.keep_last=never"]
    saved = train(tmp_path / "saved", pairs_dir, tiny_bert_dir, *args)
    result = train(tmp_path / "metric_only", pairs_dir, tiny_bert_dir, *args, "trainer.save_best=false")
    assert not (tmp_path / "metric_only" / "checkpoints").exists()
    assert result["checkpoint"] is None and result["best"] == saved["best"]
    assert saved["best"]["step"] != saved["train"]["steps"]  # the best is not the last model: it was reloaded ...
    best = next(r for r in evals(tmp_path / "metric_only") if r["step"] == result["best"]["step"])
    assert result["dev"] == {k: best[k] for k in result["dev"]}  # ... here its evaluation's figures are the dev
    assert result["dev"] == pytest.approx(saved["dev"], abs=1e-6)  # and the reloaded checkpoint scores the same


# run.py, SIGKILLed right after checkpoints/last is written at optimizer step KILL_AT: a crash at a chosen point


@pytest.mark.slow
def test_resumed_run_keeps_its_patience_and_evaluations(tmp_path):
    """An evaluation at the step of a checkpoint comes before it: the resumed run repeats none and loses none,
    and its early-stopping count goes on where it was. min_delta=1: no gain after the first evaluation, so the
    straight run stops at step 20, its 4th evaluation; the other run is killed at step 15 with a count of 2."""
    args = [
        "experiment=smoke",
        "trainer.log_every=1",
        "trainer.predict=false",
        "trainer.epochs=2",
        "trainer.metric=loss",
    ]
    args += ["trainer.eval_every_steps=5", "trainer.save_every_steps=5", "trainer.early_stopping.patience=3"]
    args += ["trainer.early_stopping.min_delta=1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_py(*args, f"hydra.run.dir={straight}").returncode == 0
    kill_after_save(15, *args, f"hydra.run.dir={killed}")
    state = TrainState.load(killed / "checkpoints" / "last" / "state.pt")
    assert (state.step, state.evals_without_gain, state.stopped_early) == (15, 2, None)

    proc = run_py(*args, "trainer.resume=true", f"hydra.run.dir={killed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = summary(straight), summary(killed)
    assert a["stopped_early"] == b["stopped_early"] == {"epoch": 1, "step": 20}
    assert b["best"] == a["best"] and b["dev"] == a["dev"]
    assert records(killed) == records(straight)  # every evaluation once, at its step
    # the run completed: keep_last=until_done deleted checkpoints/last
    assert not (killed / "checkpoints" / "last").exists() and (killed / "checkpoints" / "best").is_dir()
