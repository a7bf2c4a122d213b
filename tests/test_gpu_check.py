"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check in its CPU form (tiny model, smoke pairs), so that
the script is known to run before device time is spent on it. Needs neither a GPU nor ../shared."""

import re
import subprocess
import sys

import pytest

from .conftest import ENV, ROOT

STEPS = ["setup", "cuda_tests", "throughput", "epoch", "ddp", "profile"]


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_says_how_each_went(tmp_path):
    out = tmp_path / "out"
    env = {**ENV, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header, *rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()]
    assert header == ["step", "status", "rc", "seconds", "limit_s"]
    assert [r[0] for r in rows] == STEPS
    # without a GPU the CUDA tests are skipped; the dry run gives every other step its CPU form
    assert {r[0]: r[1] for r in rows} == {step: "skipped" if step == "cuda_tests" else "ok" for step in STEPS}
    assert sum(int(r[4]) for r in rows) <= 540, "the limits must leave room in a 600 s device call"
    for n, step in enumerate(STEPS):
        log = (out / f"{n}_{step}.log").read_text()
        status = "skipped" if step == "cuda_tests" else "ok"
        assert re.search(rf"^RESULT {step} {status} rc=\d+ seconds=[\d.]+ limit=\d+$", log, re.M), log[-2000:]
    assert "needs a CUDA GPU" in (out / "1_cuda_tests.log").read_text()
    assert re.search(r"afqmc speed-up: [\d.]+x trainer_grouped", (out / "2_throughput.log").read_text())
    assert '"world_size": 2' in (out / "4_ddp.log").read_text()
    assert '{"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"' in (out / "4_ddp.log").read_text()  # Slurm's task 1
    assert "operators by self CPU time" in (out / "profile_kernels.txt").read_text()
    # what a device call brings back: at most 8 files, named in letters, digits, '.', '_' and '-'
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[\w.-]+", f) for f in files), files
