"""run.py as a user runs it: a bad config or an unreachable model is one error line, exit 1, no traceback."""

import os
import subprocess
import sys
import time

import pytest

from .conftest import ENV, ROOT, hub_cache, run_py


@pytest.mark.parametrize(
    "override,message",
    [
        # caught by the schema, after Hydra composed the config
        ("trainer.epochs=abc", "ConfigError: trainer.epochs='abc' is invalid; expected an integer >= 1"),
        # caught by Hydra while composing (the key is not there to override), reworded as one line
        (
            "optimizer.lrr=1e-5",
            "ConfigError: optimizer.lrr=1e-5: unknown key; keys of optimizer: betas, eps, lr, name, "
            "weight_decay (did you mean optimizer.lr?)",
        ),
    ],
)
def test_bad_config_is_one_line(tmp_path, override, message):
    proc = run_py("experiment=smoke", override, f"hydra.run.dir={tmp_path}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert message in out and "Traceback" not in out, out
    assert [line for line in out.splitlines() if "Error" in line] == [
        line for line in out.splitlines() if message in line
    ]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cfg_job_still_prints_the_config():
    proc = run_py("--cfg", "job", "trainer.epochs=abc")  # printing checks nothing: it shows what would run
    assert proc.returncode == 0, proc.stderr
    assert (
        "epochs: abc" in proc.stdout
        and "on_bad_line: error" in proc.stdout
        and "trust_remote_code: false" in proc.stdout
    )


def test_offline_hub_name_fails_fast(tmp_path):
    start = time.monotonic()
    proc = run_py(
        "experiment=smoke",
        "model.checkpoint=no-such-org/no-such-model",
        f"hydra.run.dir={tmp_path}",
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert "model.checkpoint='no-such-org/no-such-model'" in out and "local directory" in out, out
    assert seconds < 20, seconds


def test_a_bad_config_is_reported_whole_within_seconds_and_leaves_no_run_directory(tmp_path):
    start = time.monotonic()
    proc = run_py(
        "experiment=smoke",
        "trainer.epochs=abc",
        "optimizer.lr=-1",
        "dataset.format=xml",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    line = next(line for line in out.splitlines() if "ConfigError" in line)
    assert "ConfigError: 3 problems: (1) dataset.format='xml' is invalid" in line, line
    assert "(2) optimizer.lr=-1 is invalid" in line and "(3) trainer.epochs='abc' is invalid" in line, line
    assert seconds < 3, seconds  # the config is checked before torch and transformers load
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", ["experiment=smoke", "model.checkpoint=some-org/bert"])
def test_the_config_check_loads_neither_torch_nor_transformers(tmp_path, model):
    """A local checkpoint directory, or a hub name (the default, bert-base-chinese, is one) whose config.json
    is in the Hugging Face cache."""
    code = (
        "import sys; from tests.conftest import compose_cfg; from afqmc.config.schema import check_config; "
        f"check_config(compose_cfg([{model!r}])); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    cache = hub_cache(tmp_path, "some-org/bert", {"model_type": "bert", "max_position_embeddings": 512})
    env = {**ENV, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_a_missing_key_is_called_missing(tmp_path):
    """A corpus YAML without its `format` line (conf/dataset_defaults/ gives no format): missing, named."""
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    text = (ROOT / "conf" / "dataset" / "afqmc.yaml").read_text()
    (tmp_path / "conf" / "dataset" / "mycorpus.yaml").write_text(
        "".join(line for line in text.splitlines(keepends=True) if not line.startswith("format:"))
    )
    proc = run_py(
        "dataset=mycorpus", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.run.dir={tmp_path / 'r'}"
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "ConfigError: dataset.format is missing; expected one of 'jsonl'" in out, out


@pytest.mark.slow
def test_a_failed_run_names_its_directory_first_and_last(tmp_path):
    proc = run_py("experiment=smoke", "dataset.root=no-such-dir", f"hydra.run.dir={tmp_path}")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and lines[0].endswith(f"run directory: {tmp_path}"), proc.stdout
    assert lines[-2].endswith(f"run directory: {tmp_path}; failed (summary.json says why)"), proc.stdout
    assert "DataError: no-such-dir/train.json: split file 'train' not found" in lines[-1], proc.stdout
