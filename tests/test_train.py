"""The training loop learns; run.py end to end; sweeps; predict CLI."""

import json
import random
import subprocess
import sys

import pytest

import afqmc
from afqmc import evaluate
from afqmc.training.checkpoint import load_model
from afqmc.training.components import build_trainer

from .conftest import ROOT, SMOKE_PAIRS, compose_cfg, run_py, write_jsonl

PRODUCTS = ["余额宝", "信用卡", "网商贷", "支付宝"]  # one length: pair length says nothing of the label


def product_pairs(rng, n):
    """Label 1 when the second question names one of the first two products: learnable by a tiny
    BERT in a few epochs whatever its random start, and half the pairs by chance."""
    rows = []
    for _ in range(n):
        a, b = rng.choice(PRODUCTS), rng.choice(PRODUCTS)
        rows.append({"sentence1": f"{a}怎么开通", "sentence2": f"如何关闭{b}", "label": str(int(b in PRODUCTS[:2]))})
    return rows


@pytest.mark.parametrize("seed", [0, 1])
def test_training_loop_learns(tmp_path, tiny_bert_dir, seed):
    rng = random.Random(seed)
    write_jsonl(tmp_path / "d" / "train.json", product_pairs(rng, 600))
    write_jsonl(tmp_path / "d" / "dev.json", product_pairs(rng, 200))
    cfg = compose_cfg(
        [
            f"dataset.root={tmp_path / 'd'}",
            f"model.checkpoint={tiny_bert_dir}",
            "model.pretrained=false",
            "dataset.splits.test=null",
            "optimizer.lr=1e-3",
            "trainer.epochs=4",
            "trainer.batch_size=16",
            f"trainer.seed={seed}",
        ]
    )
    best = afqmc.train(cfg, tmp_path / "out")
    dev = json.loads((tmp_path / "out" / "summary.json").read_text())["dev"]
    assert best > 0.9 and dev["accuracy"] > 0.9 and dev["f1_pos"] > 0.9, dev  # chance: 0.5


def test_setup_then_fit_builds_once(tmp_path, pairs_dir, tiny_bert_dir, monkeypatch):
    trainer = build_trainer(compose_cfg([f"dataset.root={pairs_dir}", f"model.checkpoint={tiny_bert_dir}"]), tmp_path)
    trainer.setup()
    model = trainer.model
    for step in ("_setup_run", "_setup_training", "_setup_model", "_setup_data"):
        monkeypatch.setattr(trainer, step, lambda step=step: pytest.fail(f"fit() after setup() called {step}"))
    trainer.fit()
    assert trainer.model is model and (tmp_path / "summary.json").is_file()


def test_max_steps_and_grad_accumulation(tmp_path, pairs_dir, tiny_bert_dir):
    cfg = compose_cfg(
        [
            f"dataset.root={pairs_dir}",
            f"model.checkpoint={tiny_bert_dir}",
            "trainer.batch_size=2",
            "trainer.grad_accum_steps=2",
            "trainer.max_steps=2",
            "trainer.epochs=5",
            "trainer.log_every=1",
        ]
    )
    afqmc.train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train"]["steps"] == 2 and summary["train"]["samples"] == 8  # 2 steps x 2 micro-batches x 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2]
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [1]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert_cls", "bert_pair_module"])
def test_smoke_run_writes_every_output(tmp_path, model):
    out = tmp_path / "run"
    proc = run_py("experiment=smoke", f"model={model}", f"hydra.run.dir={out}", "trainer.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "run.log",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/best/config.json",
        "checkpoints/best/model.safetensors",
        "predictions/afqmc_predict.json",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert {"epoch", "metric", "value"} <= summary["best"].keys()
    assert {"accuracy", "f1_macro", "f1_pos", "loss"} <= summary["dev"].keys()
    assert {"seconds", "samples", "samples_per_second", "steps"} <= summary["train"].keys()
    assert summary["output_dir"] == str(out) and summary["train"]["samples"] == 2 * SMOKE_PAIRS["train"]
    preds = [json.loads(line) for line in (out / "predictions" / "afqmc_predict.json").read_text().splitlines()]
    assert [p["id"] for p in preds] == list(range(SMOKE_PAIRS["test"])) and {p["label"] for p in preds} <= {"0", "1"}
    assert "epoch 2 dev: accuracy" in (out / "run.log").read_text()
    # the run directory named at the start and at the end, with the best metric and the predictions
    for lines in (proc.stdout.splitlines(), (out / "run.log").read_text().splitlines()):
        assert lines[0].endswith(f"run directory: {out}"), lines[0]
        assert lines[-1].endswith(
            f"run directory: {out}; best f1_macro {summary['best']['value']:.4f} "
            f"(epoch {summary['best']['epoch']}, step {summary['best']['step']}), "
            f"predictions: {out / 'predictions' / 'afqmc_predict.json'}"
        ), lines[-1]
    assert {json.loads(line)["type"] for line in (out / "metrics.jsonl").read_text().splitlines()} == {"train", "eval"}

    # the best checkpoint reloads as the model it was, and scores what summary.json says
    best = load_model(out / "checkpoints" / "best")
    assert type(best).__name__ == {"bert_cls": "BertForPairwiseCLS", "bert_pair_module": "BertPairModule"}[model]
    assert best.config.id2label == {0: "0", 1: "1"}
    cfg = compose_cfg(["experiment=smoke", f"model={model}", "trainer.predict=false"])
    trainer = build_trainer(cfg, tmp_path / "rescore")
    trainer.setup()
    trainer.model.load_state_dict(best.state_dict())
    assert trainer.evaluate("dev") == pytest.approx(summary["dev"], abs=1e-6)
    pred = subprocess.run(
        [sys.executable, "-m", "afqmc.predict", str(out / "checkpoints" / "best"), "借呗怎么还款", "如何还借呗的钱"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert pred.returncode == 0 and pred.stdout.startswith("label "), pred.stderr
    # afqmc.evaluate on the run as Hydra recorded it: the dev metrics the run reported, a model card beside
    assert evaluate.main([str(out)]) == 0
    (record,) = [json.loads(p.read_text()) for p in (out / "eval").glob("dev_*.json")]
    assert record["metrics"] == pytest.approx(summary["dev"], abs=1e-6) and record["overrides"] == {}
    assert "trainer.epochs=2" in (out / "checkpoints" / "best" / "README.md").read_text()


def test_unknown_name_fails_before_heavy_work(tmp_path):
    proc = run_py("experiment=smoke", "optimizer.name=adamx", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "optimizer.name='adamx' is not registered; registered: adamw, sgd" in proc.stdout + proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
