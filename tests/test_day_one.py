"""What a new user sees: progress on a terminal and in run.log, a run without a dev split, a best checkpoint
replaced only by a real improvement, one plain line where transformers would print a table."""

import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

import afqmc
from afqmc.config.schema import check_config
from afqmc.errors import ConfigError
from afqmc.runs.records import NO_DEV
from afqmc.training.components import build_trainer

from .conftest import (
    ENV,
    ROOT,
    SMOKE_PAIRS,
    TORCHRUN,
    compose_cfg,
    kill_after_save,
    read_jsonl,
    records,
    run_py,
    smoke_steps,
    summary,
)


def run_on_a_terminal(*args, launcher=(sys.executable,), cwd=ROOT) -> tuple[int, str, str]:
    """LAUNCHER run.py ARGS with stderr on a pseudo-terminal (where tqdm draws its bars), stdout on a pipe;
    returns (exit code, the terminal's text, stdout)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's size: 120 columns
    proc = subprocess.Popen(
        [*launcher, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=ENV,
        stderr=slave,
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    out = proc.stdout.read()
    proc.wait()
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace"), out


@pytest.mark.slow
def test_on_a_terminal_bars_show_progress_and_run_log_still_gets_every_step(tmp_path):
    steps = smoke_steps(1)
    code, terminal, stdout = run_on_a_terminal(
        "experiment=smoke", "trainer.epochs=1", "trainer.log_every=5", f"hydra.run.dir={tmp_path}"
    )
    assert code == 0, terminal[-3000:]
    assert "epoch 1/1: 100%" in terminal and f"{steps}/{steps}" in terminal  # the bar ends at its last batch
    assert "scoring dev" in terminal and "scoring test" in terminal  # evaluation and predictions show progress
    log = (tmp_path / "run.log").read_text()
    step_lines = [line for line in log.splitlines() if "epoch 1 step " in line]
    assert len(step_lines) == steps // 5 and step_lines[-1].endswith(
        f"epoch 1 step {steps}/{steps} loss {read_jsonl(tmp_path / 'metrics.jsonl')[-2]['loss']:.4f} lr 0.00e+00"
    )
    assert "epoch 1 step " not in stdout  # on the console, the bar shows them


@pytest.mark.slow
def test_under_torchrun_one_bar_shows_rank_0s(tmp_path):
    """Both ranks' stderr is the terminal: only rank 0 draws bars (each bar is drawn at 0% once, when it starts)."""
    args = ["experiment=smoke", "trainer.epochs=1", "trainer.predict=false", f"hydra.run.dir={tmp_path / 'run'}"]
    code, terminal, _ = run_on_a_terminal(*args, launcher=TORCHRUN, cwd=tmp_path)
    assert code == 0, terminal[-3000:]
    assert len(re.findall(r"epoch 1/1:\s+0%", terminal)) == 1, terminal[-3000:]
    assert len(re.findall(r"scoring dev:\s+0%", terminal)) == 1, terminal[-3000:]


def test_without_a_terminal_scoring_logs_its_progress(tmp_path, pairs_dir, tiny_bert_dir, caplog):
    """Scoring 12 dev pairs one at a time: a line every tenth of the way (rounded up to whole batches)."""
    overrides = [f"dataset.root={pairs_dir}", f"model.checkpoint={tiny_bert_dir}", "trainer.eval_batch_size=1"]
    trainer = build_trainer(compose_cfg([*overrides, "dataset.splits.dev=train.json"]), tmp_path)
    trainer.setup()
    with caplog.at_level(logging.INFO, logger="afqmc.training.progress"):
        trainer.evaluate("dev", show=True)
    assert [r.getMessage() for r in caplog.records if r.name == "afqmc.training.progress"] == [
        f"scoring dev: {n}/12 batches" for n in range(2, 13, 2)
    ]


@pytest.mark.slow
def test_a_run_without_a_dev_split_keeps_the_last_as_best_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_py("experiment=smoke", "trainer.epochs=2", "dataset.splits.dev=null", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = summary(run_dir)
    assert result["status"] == "completed" and result["dev"] is None
    assert result["best"] == {"epoch": 2, "step": smoke_steps(2), "metric": None, "value": None, "note": NO_DEV}
    assert (run_dir / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (run_dir / "run.log").read_text().count("no dev split: checkpoints/best is") == 1  # saved once, at the end
    assert len(read_jsonl(run_dir / "predictions" / "afqmc_predict.json")) == SMOKE_PAIRS["test"]
    assert not [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "eval"]
    assert proc.stdout.splitlines()[-1].endswith(
        f"{NO_DEV} (epoch 2, step {smoke_steps(2)}), predictions: {run_dir / 'predictions' / 'afqmc_predict.json'}"
    )
    proc = run_py(f"hydra.run.dir={run_dir}", "trainer.resume=true")  # a completed run, skipped
    assert proc.returncode == 0 and "completed: skipped" in (run_dir / "run.log").read_text(), proc.stderr[-2000:]

    # killed in epoch 2, resumed: the same records, best checkpoint and predictions as the straight run
    killed = tmp_path / "killed"
    args = ["experiment=smoke", "trainer.epochs=2", "dataset.splits.dev=null", "trainer.save_every_steps=5"]
    kill_after_save(smoke_steps(1) + 10, *args, f"hydra.run.dir={killed}")
    proc = run_py(f"hydra.run.dir={killed}", "trainer.resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary(killed)["best"] == result["best"] and records(killed) == records(run_dir)
    for name in ("checkpoints/best/model.safetensors", "predictions/afqmc_predict.json"):
        assert (killed / name).read_bytes() == (run_dir / name).read_bytes(), name
    with pytest.raises(ConfigError, match=r"trainer.eval_every_steps=10 needs a dev split"):
        check_config(compose_cfg(["experiment=smoke", "dataset.splits.dev=null", "trainer.eval_every_steps=10"]))


def test_the_best_is_replaced_only_by_a_real_improvement(tmp_path, pairs_dir, tiny_bert_dir, monkeypatch):
    """Two evaluations that differ in the last bits of a float are one result: the first stays the best."""
    cfg = compose_cfg([f"dataset.root={pairs_dir}", f"model.checkpoint={tiny_bert_dir}", "trainer.predict=false"])
    trainer = build_trainer(cfg, tmp_path)
    trainer.setup()
    scores = iter([0.6683750376846548, 0.6683750376846549, 0.7])
    monkeypatch.setattr(trainer, "evaluate", lambda split, show=False: {"f1_macro": next(scores), "loss": 0.5})
    saved = []
    monkeypatch.setattr(
        afqmc.training.checkpoint, "save", lambda path, *args, **kwargs: saved.append(trainer.state.step)
    )
    for step in (1, 2, 3):
        trainer.state.step = step
        trainer._evaluate_dev(epoch=step)
        assert trainer.state.best["step"] == (1 if step < 3 else 3)
    assert saved == [1, 3]


def test_a_pretrained_load_says_in_one_plain_line_what_is_new(tmp_path, tiny_bert_dir, capfd, caplog):
    """transformers' LOAD REPORT table (ANSI colours, 'MISSING' rows) is not shown; one line says the head is new."""
    from transformers import BertModel

    from afqmc.config.registry import MODELS

    BertModel.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "encoder")  # an encoder: no head
    for name in ("tokenizer_config.json", "vocab.txt", "tokenizer.json"):
        if (tiny_bert_dir / name).exists():
            (tmp_path / "encoder" / name).write_bytes((tiny_bert_dir / name).read_bytes())
    cfg = compose_cfg([f"model.checkpoint={tmp_path / 'encoder'}", "model.pooling=cls"]).model
    with caplog.at_level(logging.INFO, logger="afqmc"):
        MODELS.get("bert_pair_cls")(cfg, ["0", "1"])
    printed = capfd.readouterr()
    assert "LOAD REPORT" not in printed.out + printed.err and "\x1b[" not in printed.out + printed.err
    assert [r.getMessage() for r in caplog.records if "classification head" in r.getMessage()] == [
        f"model: a new classification head (classifier.bias, classifier.weight): not in {tmp_path / 'encoder'}, "
        "initialised at random"
    ]
