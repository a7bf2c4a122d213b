"""torchrun: two CPU processes (gloo) train one run, in one directory, and score each pair once."""

import json
import os
import subprocess
import sys

from afqmc.trainer_config import build_trainer

from .conftest import ROOT, compose_cfg


def test_torchrun_two_processes_one_run_directory(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # eval batches of 16 split 100 dev pairs 4:3 and 50 test pairs 2:2 between the ranks
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "run.py"),
            "experiment=smoke",
            "trainer.epochs=2",
            "trainer.eval_batch_size=16",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # rank 1 wrote nothing of its own
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 32
    assert summary["train"]["samples"] == 1600 and summary["train"]["steps"] == 50  # 800 pairs / 32 a step, 2 epochs
    preds = [json.loads(line) for line in (run / "predictions" / "afqmc_predict.json").read_text().splitlines()]
    assert [p["id"] for p in preds] == list(range(50))

    # one process scoring the saved best checkpoint gets the dev metrics the two processes reported
    cfg = compose_cfg(
        [
            "experiment=smoke",
            f"model.checkpoint={run / 'checkpoints' / 'best'}",
            "model.pretrained=true",
            "trainer.predict=false",
        ]
    )
    single = build_trainer(cfg, tmp_path / "single")
    single.setup()
    dev = single.evaluate("dev")
    assert dev.keys() == summary["dev"].keys()
    for name, value in dev.items():
        assert abs(value - summary["dev"][name]) < 1e-5, name
