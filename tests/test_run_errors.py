"""run.py as a user runs it: a bad config or an unreachable model is one error line, exit 1, no traceback."""

import os
import time

import pytest

from .conftest import run_py


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
