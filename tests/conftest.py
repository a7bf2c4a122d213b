"""Shared fixtures and helpers: tiny data sets and a tiny BERT written into tmp_path, the shipped smoke
data's sizes, run.py in a subprocess; nothing from the network or ../shared."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import afqmc

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# One thread per subprocess: on a busy 2-core machine two threads that wait on each other make each step ~50x slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def compose_cfg(overrides=(), hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# experiment=smoke: its data shipped in the package, its batch size; counts derive from them
SMOKE_PAIRS = {split: len(read_jsonl(afqmc.ASSETS / "smoke" / f"{split}.json")) for split in ("train", "dev", "test")}
SMOKE_BATCH = compose_cfg(["experiment=smoke"]).trainer.batch_size


def smoke_steps(epochs: int = 1, batch_size: int = SMOKE_BATCH) -> int:
    """Optimizer steps of a smoke run (one batch a step, the last batch of an epoch may be short)."""
    return math.ceil(SMOKE_PAIRS["train"] / batch_size) * epochs


def run_py(*args, cwd=ROOT, timeout=300, env=ENV):
    """python run.py ARGS in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def torchrun_py(*args, cwd, timeout=300):
    """torchrun --standalone --nproc_per_node=2 run.py ARGS in a subprocess, waited for."""
    return subprocess.run(
        [*TORCHRUN, str(ROOT / "run.py"), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def start_run(*args, cwd=ROOT, **popen):
    """python run.py ARGS started and not waited for (output discarded unless `popen` says otherwise)."""
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": ENV, **popen}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, **popen)


def hub_cache(root: Path, name: str, config: dict) -> Path:
    """A Hugging Face hub cache (HF_HUB_CACHE) holding `name`'s config.json alone, as a download leaves it."""
    repo, commit = root / f"models--{name.replace('/', '--')}", "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


# What the signal hook patches, named here and nowhere else: when the trainer's parts move, this is the line to change.
# Each point is "module:Class.method:steps", `steps` an argument of the method (`self` included) and the attribute
# of it that counts the optimizer steps done once the method has returned.
SIGNAL_POINTS = {
    # torch's LRScheduler.step, which the trainer calls once per optimizer step: after the step's update of the
    # weights, before its record, its evaluation and its stop check. last_epoch (restored on resume) counts the steps.
    "step": "torch.optim.lr_scheduler:LRScheduler.step:self.last_epoch",
    # the trainer's save of checkpoints/last
    "saved": "afqmc.training.trainer:Trainer._save_last:self.state.step",
}

# python -c SIGNAL_HOOK run.py ARGS: run.py, as `python run.py ARGS` runs it, that sends itself the signals
# $HOOK_SIGNALS (numbers, in order) once the method of $HOOK_POINT returns at optimizer step $HOOK_STEP.
SIGNAL_HOOK = textwrap.dedent("""
    import importlib, inspect, operator, os, runpy, signal, sys, types
    module, method, steps = os.environ["HOOK_POINT"].split(":")
    owner, name = method.split(".")
    cls = getattr(importlib.import_module(module), owner)
    original, at = getattr(cls, name), int(os.environ["HOOK_STEP"])
    signums = [signal.Signals(int(n)) for n in os.environ["HOOK_SIGNALS"].split(",")]
    signature = inspect.signature(original)

    def hooked(*args, **kwargs):
        result = original(*args, **kwargs)
        call = types.SimpleNamespace(**signature.bind(*args, **kwargs).arguments)
        here = os.environ.get("RANK", "0") == os.environ.get("HOOK_RANK", os.environ.get("RANK", "0"))
        if operator.attrgetter(steps)(call) == at and here:
            print(f"signal hook: {'+'.join(s.name for s in signums)} at step {at}", flush=True)
            for signum in signums:
                os.kill(os.getpid(), signum)  # (its handler runs before os.kill returns)
        return result

    setattr(cls, name, hooked)
    sys.argv[:2] = [sys.argv[1]]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python run.py` sets it
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def signal_at(step: int, signums, *args, point="step", cwd=ROOT, torchrun=False, rank=None, timeout=300):
    """python run.py ARGS (or torchrun ... run.py ARGS: each rank alike, or `rank` alone), that sends itself `signums`
    (one signal or several, in order) from inside the process at optimizer step `step`: at point "step", during that
    step (after its update of the weights, before its record, its evaluation and its stop check), as if they had come
    from outside at that moment; at point "saved", right after it saves checkpoints/last at that step.
    SIGNAL_POINTS names what is patched. No clock: the same step every time. Waited for; stdout and stderr
    together in .stdout."""
    signums = [signums] if isinstance(signums, int) else list(signums)
    launcher = (*TORCHRUN, "--no-python", sys.executable) if torchrun else (sys.executable,)
    env = {
        **ENV,
        "HOOK_POINT": SIGNAL_POINTS[point],
        "HOOK_STEP": str(step),
        "HOOK_SIGNALS": ",".join(str(int(s)) for s in signums),
        **({"HOOK_RANK": str(rank)} if rank is not None else {}),  # under torchrun: that rank alone
    }
    return subprocess.run(
        [*launcher, "-c", SIGNAL_HOOK, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def kill_after_save(step: int, *args) -> None:
    """python run.py ARGS, killed (SIGKILL) right after it saves checkpoints/last at `step`."""
    proc = signal_at(step, signal.SIGKILL, *args, point="saved")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    return [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(run_dir / "metrics.jsonl")]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


@pytest.fixture
def pairs_dir(tmp_path):
    """A tiny AFQMC-shaped data directory."""
    rows = [
        {"sentence1": "借呗怎么还款", "sentence2": "如何还借呗", "label": "1"},
        {"sentence1": "花呗额度", "sentence2": "余额宝收益", "label": "0"},
        {"sentence1": "信用卡逾期", "sentence2": "信用卡晚还", "label": "1"},
        {"sentence1": "支付宝开通", "sentence2": "网商贷关闭", "label": "0"},
    ]
    write_jsonl(tmp_path / "data" / "train.json", rows * 3)
    write_jsonl(tmp_path / "data" / "dev.json", rows)
    write_jsonl(
        tmp_path / "data" / "test.json",
        [{"id": i + 10, "sentence1": r["sentence1"], "sentence2": r["sentence2"]} for i, r in enumerate(rows)],
    )
    return tmp_path / "data"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT (hidden 48, not 768) saved with a character vocabulary."""
    from transformers import BertConfig, BertTokenizer

    from afqmc.models.modeling import BertForPairwiseCLS

    path = tmp_path_factory.mktemp("tiny-bert")
    chars = sorted(set("借呗怎么还款如何花额度余收益信用卡逾期晚支付宝开通网商贷关闭是的吗"))
    (path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n", encoding="utf-8"
    )
    BertTokenizer(vocab=str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(
        vocab_size=5 + len(chars),
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    BertForPairwiseCLS(config).save_pretrained(path)
    return path
