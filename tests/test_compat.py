"""Run directories and checkpoints written before the package's layout changed (tests/assets/run_before_layout:
a smoke run of commit 0837cac, SIGKILLed after saving checkpoints/last at step 15 of 20, with the data and the
model directory it was started with) still load, predict and resume to the same result as a run of today."""

import shutil
from pathlib import Path

import pytest

from afqmc.predict import Predictor

from .conftest import records, run_py, summary

OLD = Path(__file__).parent / "assets" / "run_before_layout"
# as it was started (run/.hydra/overrides.yaml): relative paths, so that a copy anywhere resumes
ARGS = [
    "experiment=smoke",
    "dataset.root=data",
    "model.checkpoint=model",
    "trainer.epochs=2",
    "trainer.save_every_steps=5",
    "dataset.max_train_samples=160",
    "trainer.predict=false",
]


def test_a_checkpoint_written_before_the_layout_predicts():
    label, probability = Predictor(OLD / "run" / "checkpoints" / "best")([("借呗怎么还款", "如何还借呗")])[0]
    assert label in ("0", "1") and 0.5 <= probability <= 1


@pytest.mark.slow
def test_a_run_killed_before_the_layout_resumes_to_todays_result(tmp_path):
    shutil.copytree(OLD, tmp_path, dirs_exist_ok=True)
    resumed = run_py("hydra.run.dir=run", "trainer.resume=true", cwd=tmp_path)  # the printed resume command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    straight = run_py(*ARGS, "hydra.run.dir=today", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert records(tmp_path / "run") == records(tmp_path / "today")
    assert summary(tmp_path / "run")["dev"] == summary(tmp_path / "today")["dev"]
